"""The Receiver's bookkeeping of which associations carry which studies."""

from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dicom_clients import dataset_bytes
from helpers import tiny_image
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_STORE

from dicom_node.config import AssemblyConfig
from dicom_node.errors import StateError
from dicom_node.receive.header import UID_MISMATCH
from dicom_node.receive.store import (
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    Receiver,
    error_comment,
    handle_store,
)
from dicom_node.spool import Spool
from dicom_node.state import State

CR = "1.2.840.10008.5.1.4.1.1.1"
RULES = AssemblyConfig(quiet_seconds=30.0, after_release_seconds=2.0, max_wait_seconds=600.0)


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    state = State(tmp_path / "state.db", RULES)
    yield Receiver(Spool(tmp_path / "spool", 0), state, 10**7, clock=lambda: 1000.0)  # type: ignore[misc]
    state.close()


def store(receiver: Receiver, key: int, tmp_path: Path, number: int) -> str:
    """Store one instance of one study over association ``key``; its study UID."""
    ds = tiny_image()
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.9999.{number}"
    path = tmp_path / f"in{number}.dcm"
    ds.save_as(path, enforce_file_format=True)
    response = receiver.store(
        key, "SCANNER", ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian,
        dataset_bytes(path),
    )  # fmt: skip
    assert int(response.Status) == SUCCESS
    return str(ds.StudyInstanceUID)


def test_a_released_association_lets_its_study_complete_sooner(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.association_started(1, "SCANNER", "127.0.0.1")
    study = store(receiver, 1, tmp_path, 1)
    summary = receiver.state.study(study)
    assert summary is not None and summary.open_associations == 1
    assert summary.due_at == pytest.approx(1000.0 + RULES.quiet_seconds)
    receiver.association_ended(1, "released")
    summary = receiver.state.study(study)
    assert summary is not None and summary.open_associations == 0
    assert summary.due_at == pytest.approx(1000.0 + RULES.after_release_seconds)


def test_a_store_that_outlives_its_association_releases_its_study(
    receiver: Receiver, tmp_path: Path
) -> None:
    # pynetdicom reports a closed connection from its network thread while the C-STORE
    # handler may still be storing the association's last instance: that study's count
    # of open associations must not stay at 1 (it would wait out quiet_seconds).
    receiver.association_started(1, "SCANNER", "127.0.0.1")
    first = store(receiver, 1, tmp_path, 1)
    receiver.association_ended(1, "connection closed")
    late = store(receiver, 1, tmp_path, 2)  # handled after the end was reported
    for study in (first, late):
        summary = receiver.state.study(study)
        assert summary is not None
        assert summary.open_associations == 0, study
        assert summary.due_at == pytest.approx(1000.0 + RULES.after_release_seconds)
    receiver.association_ended(1, "connection closed")  # reported twice: no effect
    # The same key for a new association (object ids are reused) starts afresh.
    receiver.association_started(1, "SCANNER", "127.0.0.1")
    again = store(receiver, 1, tmp_path, 3)
    summary = receiver.state.study(again)
    assert summary is not None and summary.open_associations == 1


def test_studies_are_receiving_while_an_instance_arrives_on_their_association(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.association_started(1, "SCANNER", "127.0.0.1")
    receiver.association_started(2, "SCANNER", "127.0.0.1")
    study = store(receiver, 1, tmp_path, 1)
    other = store(receiver, 2, tmp_path, 2)
    assert receiver.receiving_studies() == frozenset()
    receiver.data_arriving(1)  # BulkReadSocket: a data set begins on association 1
    receiver.data_arriving(99)  # one never accepted: nothing
    assert receiver.receiving_studies() == {study}
    third = store(receiver, 1, tmp_path, 3)  # stored: arrived
    assert receiver.receiving_studies() == frozenset()
    # Cut off mid-data-set: no C-STORE follows, nothing is arriving any more.
    receiver.data_arriving(2)
    receiver.association_ended(2, "aborted")
    assert receiver.receiving_studies() == frozenset()
    assert other
    # Ended while its instance is being stored: receiving until stored.
    seen: list[frozenset[str]] = []
    write = receiver.spool.write

    def ending_write(*args: Any, **kwargs: Any) -> None:
        receiver.association_ended(1, "aborted")
        seen.append(receiver.receiving_studies())
        write(*args, **kwargs)

    monkeypatch.setattr(receiver.spool, "write", ending_write)
    store(receiver, 1, tmp_path, 1)
    assert seen == [{study, third}]  # every study the association carried
    assert receiver.receiving_studies() == frozenset()


def _event(request: C_STORE, abstract_syntax: str = CR) -> SimpleNamespace:
    """What handle_store reads of a pynetdicom C-STORE event."""
    return SimpleNamespace(
        request=request,
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="SCANNER")),
        context=SimpleNamespace(
            transfer_syntax=ExplicitVRLittleEndian, abstract_syntax=abstract_syntax
        ),
    )


MR = "1.2.840.10008.5.1.4.1.1.4"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.mark.parametrize(
    ("sop_class", "context", "comment"),
    [
        # pynetdicom does not check the request against its context: an MR instance sent
        # on a DX context was written, answered 0x0000 and counted in its study.
        (MR, DX, f"SOP class not supported: {MR}"),
        (CR, DX, f"SOP class {CR} on another class's context ({DX})"[:61] + "..."),
    ],
    ids=["unsupported", "other-context"],
)
def test_a_sop_class_not_the_contexts_is_refused_and_not_stored(
    receiver: Receiver, tmp_path: Path, sop_class: str, context: str, comment: str
) -> None:
    ds = tiny_image(sop_class=sop_class)
    request = C_STORE()
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = sop_class, ds.SOPInstanceUID
    request.DataSet = BytesIO(_encoded(ds))
    response = handle_store(_event(request, context), receiver)
    assert (int(response.Status), response.ErrorComment) == (SOP_CLASS_NOT_SUPPORTED, comment)
    assert receiver.state.study_sources(str(ds.StudyInstanceUID)) == []
    assert not any(p.is_file() for p in (tmp_path / "spool").rglob("*"))
    assert (
        receiver.metrics.registry.get_sample_value(
            "dicom_node_instances_refused_total", {"status": "0x0122"}
        )
        == 1.0
    )


def test_requests_refused_before_the_receiver_are_counted(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused() -> float:
        value = receiver.metrics.registry.get_sample_value(
            "dicom_node_instances_refused_total", {"status": "0x0110"}
        )
        return value or 0.0

    request = C_STORE()  # no data set
    assert int(handle_store(_event(request), receiver).Status) == PROCESSING_FAILURE
    assert refused() == 1.0

    def bug(*args: object) -> None:
        raise RuntimeError("a bug in the node")

    monkeypatch.setattr(receiver, "store", bug)
    request.DataSet = BytesIO(b"\x00" * 8)
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CR, "1.2.3.4"
    response = handle_store(_event(request), receiver)
    assert int(response.Status) == PROCESSING_FAILURE
    assert response.ErrorComment == "internal error in the node; see its log"
    assert refused() == 2.0


def _encoded(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _store_bytes(receiver: Receiver, ds: Dataset, stream: bytes) -> int:
    response = receiver.store(
        1, "SCANNER", ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, stream
    )
    return int(response.Status)


def test_a_resend_that_drops_leading_elements_replaces_the_stored_one(
    receiver: Receiver,
) -> None:
    ds = tiny_image()
    ds.SpecificCharacterSet, ds.ImageType = "ISO_IR 192", ["ORIGINAL", "PRIMARY"]
    original = _encoded(ds)
    del ds.SpecificCharacterSet, ds.ImageType  # a correction removing (0008,0005), (0008,0008)
    corrected = _encoded(ds)
    assert original.endswith(corrected)  # the old check took it for a duplicate
    assert _store_bytes(receiver, ds, original) == SUCCESS
    assert _store_bytes(receiver, ds, corrected) == SUCCESS
    indexed = receiver.state.indexed(ds.SOPInstanceUID)
    assert indexed is not None
    assert dataset_bytes(receiver.spool.path(indexed.path)) == corrected


def test_a_replacement_whose_indexing_failed_is_indexed_when_resent(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = tiny_image()
    assert _store_bytes(receiver, ds, _encoded(ds)) == SUCCESS
    ds.Modality = "DX"  # corrected at the modality, sent again
    corrected = _encoded(ds)
    record = receiver.state.record_instance

    def locked_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(receiver.state, "record_instance", record)
        raise StateError("database is locked")

    monkeypatch.setattr(receiver.state, "record_instance", locked_once)
    response = receiver.store(
        1, "SCANNER", ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, corrected
    )
    assert int(response.Status) == OUT_OF_RESOURCES  # the file is replaced
    # The cause, not the database's path, in the 64 characters the PACS shows.
    assert response.ErrorComment == "not stored: database is locked"
    assert _store_bytes(receiver, ds, corrected) == SUCCESS  # the sender's retry
    indexed = receiver.state.indexed(ds.SOPInstanceUID)
    assert indexed is not None and indexed.modality == "DX"  # was: 'CR' for good


def test_a_move_to_another_study_whose_indexing_failed_leaves_no_orphan(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = tiny_image("1.2.3.1")
    assert _store_bytes(receiver, ds, _encoded(ds)) == SUCCESS
    ds.StudyInstanceUID = "1.2.3.2"

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise StateError("database is locked")

    monkeypatch.setattr(receiver.state, "record_instance", locked)
    assert _store_bytes(receiver, ds, _encoded(ds)) == OUT_OF_RESOURCES
    assert not receiver.spool.path(
        receiver.spool.relative_path("1.2.3.2", ds.SOPInstanceUID)
    ).exists()
    assert receiver.spool.path(receiver.spool.relative_path("1.2.3.1", ds.SOPInstanceUID)).exists()


def test_one_instance_under_two_studies_at_once_is_stored_once(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each store took its own study's lock only: both found the SOP Instance UID new, both
    # wrote, one file was left unindexed (an orphan) and its study complete and empty.
    first, second = tiny_image("1.2.3.1"), tiny_image("1.2.3.2")
    second.SOPInstanceUID = first.SOPInstanceUID
    writing, go_on = threading.Event(), threading.Event()
    write = receiver.spool.write

    def slow_write(relative: str, chunks: Any, reservation: Any = None) -> None:
        if "1.2.3.1" in relative:
            writing.set()
            go_on.wait(5)
        write(relative, chunks, reservation)

    monkeypatch.setattr(receiver.spool, "write", slow_write)
    statuses: list[int] = []
    one = threading.Thread(target=lambda: statuses.append(_store_bytes(receiver, first,
                                                                      _encoded(first))))  # fmt: skip
    one.start()
    assert writing.wait(5)
    two = threading.Thread(target=lambda: statuses.append(_store_bytes(receiver, second,
                                                                      _encoded(second))))  # fmt: skip
    two.start()
    two.join(0.3)
    assert two.is_alive()  # waits for the first store of the same instance
    go_on.set()
    one.join(5)
    two.join(5)
    assert statuses == [SUCCESS, SUCCESS]
    files = list((receiver.spool.root / "instances").rglob("*.dcm"))
    indexed = receiver.state.indexed(first.SOPInstanceUID)
    assert indexed is not None and indexed.path.startswith("instances/1.2.3.2/")
    assert [receiver.spool.path(indexed.path)] == files  # moved, not copied: no orphan


def test_a_request_uid_that_is_no_uid_is_logged_escaped(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The request's Affected SOP Instance UID is the peer's text: a line break in it wrote a
    # forged line into a plain log. It is shown by its ascii() where it is not a UID.
    ds = tiny_image()
    path = tmp_path / "in.dcm"
    ds.save_as(path, enforce_file_format=True)
    forged = "1.2.3\n2026-01-01 00:00:00 INFO dicom_node.x: study 9 done"
    response = receiver.store(
        1, "SCANNER", ds.SOPClassUID, forged, ExplicitVRLittleEndian, dataset_bytes(path)
    )
    assert int(response.Status) == UID_MISMATCH
    assert (
        response.ErrorComment
        == (f"SOP Instance UID differs from the request's: {ds.SOPInstanceUID} in the data set, ")[
            :61
        ]
        + "..."
    )
    (record,) = [r for r in caplog.records if "refused" in r.getMessage()]
    assert "\n" not in record.getMessage()
    assert "'1.2.3\\n2026-01-01 00:00:00 INFO dicom_node.x: study 9 done'" in record.getMessage()


@pytest.mark.parametrize(
    ("reason", "comment"),
    [
        # The backslash is LO's value separator: a peer kept only "... invalid VR b'".
        ("invalid VR b'\\x00\\x01'", "invalid VR b'/x00/x01'"),
        ("line\nbreak and é", "line?break and ?"),  # the command set's repertoire: ASCII
        ("x" * 64, "x" * 64),
        ("y" * 65, "y" * 61 + "..."),
    ],
)
def test_an_error_comment_is_one_lo_value(reason: str, comment: str) -> None:
    assert error_comment(reason) == comment
