"""``dicom-node demo``: the node's main job end to end, on the embedded defaults.

Builds the demo engines if they are not cached (trained on phantoms; minutes on
a CPU), starts a PACS stand-in (a pynetdicom Storage SCP) and a node that sends
its results there, writes six phantom studies (normal, femoral neck fracture,
osteoarthritis with a CT series, a loosening THA and a dislocated THA with AP and
lateral views, and an impingement seen only on CT and in the request text, in
several transfer syntaxes), sends them with dcmtk's
``storescu`` (a real C-STORE client; pynetdicom when dcmtk is missing), waits
for each study's results to reach the PACS and reports per study: the findings and
probabilities per hip, the priority and the time to result. Every Secondary
Capture is saved as a PNG and every SR as a text dump under ``--out``.
Everything it starts, it stops. Synthetic data and demo engines only: not for
clinical use.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image
from pydicom import dcmread

from dicom_node.config import Config, TlsConfig
from dicom_node.config_results import Destination
from dicom_node.demo.cases import DemoStudy, truth, write_cases
from dicom_node.demo.pacs import StandInPacs
from dicom_node.errors import DicomNodeError
from dicom_node.node import Node
from dicom_node.pipeline import engines_needed
from dicom_node.spool import Spool
from dicom_node.synthetic.dcmtk import dcmtk_program, storescu, storescu_profile
from engines.manifest import ManifestError, read_manifest, verify_artefacts

WAIT_SECONDS = 120.0
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
# The folders a demo run writes under --out, replaced by the next run; the mark says so.
DEMO_FOLDERS = ("spool", "incoming", "pacs", "results")
DEMO_MARK = ".dicom-node-demo"
DEFAULT_OUT = Path("var/demo")  # --out, relative to the working folder


class DemoError(DicomNodeError, RuntimeError):
    """The demo could not run to its end."""


def _engines_ready(cfg: Config, names: Sequence[str]) -> list[str]:
    """The engines that still need building: missing, failing verification, or a demo
    engine `engines build --demo` would rebuild (another version or profile, a record its
    manifest lacks); a site's own engine in the cache is used as it is."""
    from engines.build import cached_demo

    missing = []
    for name in names:
        folder = cfg.engines.cache_dir / name
        try:
            manifest = read_manifest(folder)
            verify_artefacts(manifest, folder)
        except ManifestError:
            missing.append(name)
            continue
        if manifest.version.endswith("-demo") and cached_demo(cfg.engines.cache_dir, name) is None:
            missing.append(name)
    return missing


def _demo_config(cfg: Config, out: Path, pacs: StandInPacs) -> Config:
    """The given config on loopback, with a fresh spool, a short quiet period and the PACS
    stand-in as the only destination."""
    return dataclasses.replace(
        cfg,
        node=dataclasses.replace(
            cfg.node,
            host="127.0.0.1",
            port=0,
            allowed_calling_aes=(),
            tls=TlsConfig(),
            drain_seconds=2.0,
        ),
        storage=dataclasses.replace(cfg.storage, spool_dir=out / "spool", min_free_bytes=0),
        assembly=dataclasses.replace(
            cfg.assembly,
            quiet_seconds=min(cfg.assembly.quiet_seconds, 2.0),
            after_release_seconds=min(cfg.assembly.after_release_seconds, 0.5),
        ),
        destinations=(Destination("demo-pacs", pacs.ae_title, "127.0.0.1", pacs.port),),
        metrics=dataclasses.replace(cfg.metrics, host="127.0.0.1", port=0),
    )


def _send(node: Node, files: Sequence[Path], work: Path) -> str:
    ae = node.config.node.ae_title
    if dcmtk_program("storescu"):
        result = storescu(
            "127.0.0.1", node.port, files, called_ae=ae, calling_ae="DEMO_MODALITY",
            profile=storescu_profile(work / "storescu.cfg"),
        )  # fmt: skip
        if result.returncode != 0:
            raise DemoError(f"storescu failed: {result.stderr.strip()[-500:]}")
        return "dcmtk storescu"
    from pynetdicom import AE

    client = AE("DEMO_MODALITY")
    datasets = [dcmread(p) for p in files]
    for ds in datasets:
        client.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = client.associate("127.0.0.1", node.port, ae_title=ae)
    if not assoc.is_established:
        raise DemoError("the node refused the demo's association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else None
            if code != 0:
                shown = "no response" if code is None else f"status 0x{code:04X}"
                raise DemoError(f"the node did not store {ds.SOPInstanceUID} ({shown})")
    finally:
        assoc.release()
    return "pynetdicom"


def _dump_sr(path: Path, target: Path) -> None:
    if shutil.which("dsrdump"):
        result = subprocess.run(
            ["dsrdump", "+Pt", "+Pl", str(path)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            target.write_text(result.stdout, encoding="utf-8")
            return
    target.write_text(str(dcmread(path)), encoding="utf-8")


def _settled(node: Node) -> set[str]:
    """The studies whose job ended without results (failed, skipped), or whose results have
    all left the outbox (delivered or dead): waiting only for the SR, which the outbox
    sends first, missed overlays that reached the PACS a few milliseconds later."""
    if node.state is None or node.outbox is None:
        return set()
    jobs = node.state.jobs()
    unsent = {item.study_uid for item in node.outbox.items(("pending",))}
    ended = {j.study_uid for j in jobs if j.state in ("failed", "skipped")}
    done = {j.study_uid for j in jobs if j.state == "done"} - unsent
    return ended | done


def _save(pacs: StandInPacs, study_uid: str, folder: Path) -> list[Path]:
    """PNG previews of the study's overlays and a text dump of its SR."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    n = 0
    for sop, cls, _ in sorted(pacs.objects(study_uid), key=lambda o: o[2]):
        path = pacs.folder / study_uid / f"{sop}.dcm"
        if cls == SR_CLASS:
            _dump_sr(path, folder / "sr.txt")
            written.append(folder / "sr.txt")
        elif cls == SC_CLASS:
            n += 1
            ds = dcmread(path)
            engine = str(ds.get("SeriesDescription", "")).rsplit(" ", 1)[-1] or "overlay"
            target = folder / f"sc-{n}-{engine}.png"
            Image.fromarray(ds.pixel_array).save(target)
            written.append(target)
    return written


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _table(written: DemoStudy, summary: dict[str, object], seconds: float) -> list[str]:
    lines = [f"  truth    {truth(written)}"]
    hips = summary.get("hips", [])
    lines.append(
        f"  priority {summary.get('priority')}   result in the PACS {seconds:.1f} s after the "
        f"study was sent (inference {float(summary.get('inference_seconds', 0.0)):.2f} s)"  # type: ignore[arg-type]
    )
    for hip in hips if isinstance(hips, list) else []:
        reported = ", ".join(
            f"{r['name'].replace('_', ' ')} {r['shown']}"
            + ("" if r["present"] else " (below threshold)")
            for r in hip["reported"]
        )
        risk = f", PJI risk {hip['pji_risk']:.0f}/100" if hip.get("pji_risk") is not None else ""
        lines.append(
            f"  {hip['engine']:<14} {hip['side']}  {_inputs(hip):<24}  {hip['priority']:<6}  "
            f"{reported}{risk}"
        )
    return lines


def _inputs(hip: dict[str, object]) -> str:
    """The views, or what a multi-input engine was given (``AP+CT+text``, ``AP+age,sex``)."""
    given = hip.get("inputs")
    if not isinstance(given, dict) or not given:
        return str(hip["views"])
    if "ct" in given:
        return "+".join(
            ["AP", *(k.upper() if k == "ct" else k for k in ("ct", "text") if given[k])]
        )
    return "AP+" + ",".join(k for k, v in given.items() if v)


def run_demo(cfg: Config, out: str | Path) -> Iterator[str]:
    """Run the demo; yield the lines of its report as they happen."""
    out = Path(out).resolve()
    made = [out / name for name in DEMO_FOLDERS if (out / name).exists()]
    # A demo's folder: its mark; or, the default folder only, its PACS and incoming folders
    # (a demo wrote those there before the mark existed). Anywhere else those two names were
    # taken for a demo's: a site's /srv/dicom/{incoming,pacs,spool} was wiped.
    legacy = out == DEFAULT_OUT.resolve() and all((out / n).is_dir() for n in ("pacs", "incoming"))
    ours = (out / DEMO_MARK).exists() or legacy
    if made and not ours:
        # Someone's spool (--out /var/lib/dicom-node) must never be wiped as a demo's leftovers.
        raise DemoError(
            f"--out {out}: holds {', '.join(p.name for p in made)} that no demo wrote; give "
            "an empty folder or one a demo used before"
        )
    holder = Spool.in_use(out / "spool")
    if holder is not None:  # clearing it would pull the spool from under that node
        raise DemoError(
            f"--out {out}: its spool is in use by a running node (process {holder}); wait "
            "for that demo to end or give another folder"
        )
    for stale in made:
        shutil.rmtree(stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("written by dicom-node demo: its folders here are replaced\n")
    names = engines_needed(cfg)
    missing = _engines_ready(cfg, names)
    if missing:
        from engines.build import build_demo

        yield (f"building the demo engines {', '.join(missing)} in {cfg.engines.cache_dir} "
               "(trained on phantoms; 7-12 minutes on 2 CPU cores, once)")  # fmt: skip
        for result in build_demo(cfg.engines.cache_dir, tuple(missing)):
            yield f"  {result.manifest.name} {result.manifest.version} built"
    pacs = StandInPacs(out / "pacs")
    pacs.start()
    node: Node | None = None
    try:
        node = Node(_demo_config(cfg, out, pacs))
        node.start()
        if node.state is None:
            raise DemoError("the node started without its state")
        yield f"node {node.config.node.ae_title} on 127.0.0.1:{node.port}, engines " + ", ".join(
            f"{n} ({node.engines.backend(n)})" for n in names if node.engines
        )
        yield f"PACS stand-in {pacs.ae_title} on 127.0.0.1:{pacs.port}"
        yield f"metrics on http://127.0.0.1:{node.http_port}/metrics (and /healthz, /readyz)"
        cases = write_cases(out / "incoming")
        sent_at: dict[str, float] = {}
        for written in cases:
            client = _send(node, written.files, out)
            sent_at[written.study.identity.study_uid] = time.time()
            yield f"sent {written.case.name}: {len(written.files)} instances with {client}"
        deadline = time.monotonic() + WAIT_SECONDS
        pending = set(sent_at)
        while pending and time.monotonic() < deadline:
            pending -= _settled(node)
            time.sleep(0.05)
        if pending:
            raise DemoError(f"{len(pending)} studies got no result within {WAIT_SECONDS:.0f} s")
        undelivered: dict[str, int] = {}
        if node.outbox is not None:
            for item in node.outbox.items(("dead",)):
                undelivered[item.study_uid] = undelivered.get(item.study_uid, 0) + 1
        jobs = {j.study_uid: j for j in node.state.jobs()}
        failed = 0
        yield ""
        for n, written in enumerate(cases, start=1):
            uid = written.study.identity.study_uid
            job = jobs[uid]
            yield f"study {n} {written.case.name}  ({uid})"
            if job.state != "done" or job.summary is None:
                yield f"  {job.state}: {job.error}"
                failed += 1
                continue
            if uid in undelivered:  # its SR or an overlay never reached the PACS
                yield f"  {undelivered[uid]} results not delivered (see dicom-node outbox list)"
                failed += 1
            arrived = [at for _, cls, at in pacs.objects(uid) if cls == SR_CLASS]
            if not arrived:
                continue
            yield from _table(written, json.loads(job.summary), min(arrived) - sent_at[uid])
            files = _save(pacs, uid, out / "results" / f"{n}-{written.case.name}")
            yield "  files    " + ", ".join(_shown(p) for p in files)
        yield ""
        yield ("synthetic phantoms and demo engines trained on them: the results show the "
               "pipeline, not clinical accuracy; not for clinical use")  # fmt: skip
        if failed:  # printed above; `make demo` must not end in success
            raise DemoError(f"{failed} of {len(cases)} studies got no result (see above)")
    finally:
        if node is not None:
            node.stop(drain_seconds=2)
        pacs.stop()
