"""Real DICOM clients for the receive tests: pynetdicom sending raw file bytes, dcmtk storescu."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

from dicom_node.synthetic.dcmtk import storescu as run_storescu


@contextmanager
def raw_sending() -> Iterator[None]:
    """Make pynetdicom send a file's data set bytes exactly as they are on disk."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def send_files(
    port: int,
    paths: Sequence[Path],
    calling_ae: str = "PACS",
    called_ae: str = "TRIAGE",
    release: bool = True,
) -> list[int]:
    """Send files over one association, raw; return each C-STORE status (-1: none)."""
    ae = AE(ae_title=calling_ae)
    for path in paths:
        meta = read_file_meta_info(path)
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise AssertionError(f"association to port {port} was not established")
    statuses: list[int] = []
    with raw_sending():
        for path in paths:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if "Status" in status else -1)
    if release:
        assoc.release()
    return statuses


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a DICOM file: what a C-STORE carries."""
    data = path.read_bytes()
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    return data[144 + group_length :]


def storescu(
    port: int,
    files: Sequence[Path],
    env: dict[str, str],
    profile: tuple[str, str] | None = None,
    calling_ae: str = "PACS",
    extra: Sequence[str] = (),
) -> str:
    """storescu from the node's calling AE ``PACS``; fails the test on a nonzero exit."""
    result = run_storescu(
        "127.0.0.1",
        port,
        files,
        called_ae="TRIAGE",
        calling_ae=calling_ae,
        profile=profile,
        extra=extra,
    )
    if result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout + result.stderr
