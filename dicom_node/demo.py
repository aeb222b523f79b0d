"""``dicom-node demo``: the node's main job end to end, on the embedded defaults.

Starts a node on a free loopback port with a fresh spool under ``--out``,
writes a synthetic hip study (AP pelvis and lateral hips as DX, a CR and a
short CT series, in several compressed and uncompressed transfer syntaxes),
sends it with dcmtk's ``storescu`` (a real DICOM client; pynetdicom when dcmtk
is missing), waits until the node declares the study complete, and reports
what was received, spooled and assembled. Everything it starts, it stops.

Until the engines exist (issue 3/4) the demo ends at the durable job; the
image content is a plain geometric drawing, not a radiograph.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from dicom_node.config import Config, TlsConfig
from dicom_node.node import Node
from dicom_node.synthetic import StudyIdentity, make_cr, make_ct_series, make_dx, write
from dicom_node.synthetic.dcmtk import storescu, storescu_profile

_WAIT_LIMIT = 30.0
_HEADER = f"{'#':>2}  MOD  VIEW  SIDE  {'TRANSFER SYNTAX':<34}  {'BYTES':>8}  PIXELS"


def _drawing(rows: int, cols: int) -> npt.NDArray[np.float64]:
    """A pelvis-like drawing: soft tissue, two femoral heads and shafts."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    image: npt.NDArray[np.float64] = 600 + 200 * np.exp(-(((x - cols / 2) / (cols / 2.5)) ** 2))
    for cx in (cols * 0.3, cols * 0.7):
        head = (x - cx) ** 2 + (y - rows * 0.45) ** 2 < (rows * 0.09) ** 2
        shaft = (abs(x - cx) < cols * 0.05) & (y > rows * 0.45)
        image[head | shaft] += 1800
    return image


def _study(folder: Path, seed: int = 1) -> list[Path]:
    identity = StudyIdentity.synthetic(seed)
    ap = _drawing(512, 640)
    lateral = _drawing(512, 384)
    objects = [
        make_dx(ap, identity=identity, view="AP", laterality="B", transfer_syntax=JPEG2000Lossless),
        make_dx(
            lateral,
            identity=identity,
            view="LATERAL",
            laterality="L",
            series_number=2,
            transfer_syntax=JPEGLSLossless,
        ),
        make_dx(
            lateral,
            identity=identity,
            view="LATERAL",
            laterality="R",
            series_number=3,
            transfer_syntax=JPEGLosslessSV1,
        ),
        make_cr(
            ap,
            identity=identity,
            series_number=4,
            photometric="MONOCHROME1",
            transfer_syntax=ExplicitVRLittleEndian,
        ),
    ]
    volume = np.stack([_drawing(128, 128) - 1000.0 for _ in range(6)])
    objects += make_ct_series(
        volume, identity=identity, series_number=5, transfer_syntax=RLELossless
    )
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write(ds, folder / f"{n:02d}-{ds.Modality}.dcm") for n, ds in enumerate(objects, start=1)
    ]


def _send(node: Node, files: list[Path], work: Path) -> str:
    ae = node.config.node.ae_title
    if shutil.which("storescu"):
        result = storescu(
            "127.0.0.1", node.port, files, called_ae=ae, calling_ae="DEMO_PACS",
            profile=storescu_profile(work / "storescu.cfg"),
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed: {result.stderr.strip()[-500:]}")
        return "dcmtk storescu"
    from pynetdicom import AE

    client = AE("DEMO_PACS")
    datasets = [dcmread(p) for p in files]
    for ds in datasets:
        client.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = client.associate("127.0.0.1", node.port, ae_title=ae)
    if not assoc.is_established:
        raise RuntimeError("the node refused the demo's association")
    for ds in datasets:
        assoc.send_c_store(ds)
    assoc.release()
    return "pynetdicom"


def _demo_config(cfg: Config, out: Path) -> Config:
    """The given config, kept on loopback with a fresh spool and a short quiet period."""
    return dataclasses.replace(
        cfg,
        node=dataclasses.replace(
            cfg.node, host="127.0.0.1", port=0, allowed_calling_aes=(), tls=TlsConfig()
        ),
        storage=dataclasses.replace(cfg.storage, spool_dir=out / "spool", min_free_bytes=0),
        assembly=dataclasses.replace(
            cfg.assembly,
            quiet_seconds=min(cfg.assembly.quiet_seconds, 2.0),
            after_release_seconds=min(cfg.assembly.after_release_seconds, 0.5),
        ),
    )


def run_demo(cfg: Config, out: str | Path) -> Iterator[str]:
    """Run the demo; yield the lines of its report as they happen."""
    out = Path(out)
    for stale in ("spool", "incoming"):
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    files = _study(out / "incoming")
    node = Node(_demo_config(cfg, out))
    node.start()
    try:
        yield f"node {node.config.node.ae_title} listening on 127.0.0.1:{node.port}"
        yield f"spool: {node.config.storage.spool_dir}"
        started = time.monotonic()
        client = _send(node, files, out)
        sent = time.monotonic() - started
        total = sum(p.stat().st_size for p in files)
        yield f"sent {len(files)} instances ({total / 1e6:.1f} MB) with {client} in {sent:.2f} s"
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        assert node.state is not None
        while time.monotonic() - started < _WAIT_LIMIT:
            rows = {s.study_uid: s for s in node.state.studies()}
            if study_uid in rows and rows[study_uid].state == "complete":
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"study not complete within {_WAIT_LIMIT:.0f} s")
        assembled = time.monotonic() - started
        yield ""
        yield _HEADER
        spool = node.config.storage.spool_dir
        for n, path in enumerate(files, start=1):
            sent_ds = dcmread(path)
            stored = dcmread(spool / "instances" / study_uid / f"{sent_ds.SOPInstanceUID}.dcm")
            same = np.array_equal(stored.pixel_array, sent_ds.pixel_array)
            yield (
                f"{n:>2}  {sent_ds.Modality:<3}  {sent_ds.get('ViewPosition', '-'):<4}  "
                f"{sent_ds.get('ImageLaterality', sent_ds.get('Laterality', '-')):<4}  "
                f"{UID(stored.file_meta.TransferSyntaxUID).name[:34]:<34}  "
                f"{path.stat().st_size:>8}  {'decode identical' if same else 'DIFFER'}"
            )
        study = {s.study_uid: s for s in node.state.studies()}[study_uid]
        [job] = [j for j in node.state.jobs() if j.study_uid == study_uid]
        yield ""
        yield f"study {study_uid}"
        yield (
            f"  state {study.state} ({study.completion_reason}) with {study.instance_count} "
            f"instances, {assembled:.2f} s after the first byte was sent"
        )
        yield f"  job {job.id} (generation {job.generation}) {job.state}: the pipeline comes next"
        yield ""
        yield "synthetic data only; not for clinical use"
    finally:
        node.stop(drain_seconds=2)
