"""Delivering result files to a real pynetdicom Storage SCP on loopback, and into folders."""

from __future__ import annotations

import os
import time
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from link_proxy import link_proxy
from orthanc import free_port
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.association import Association
from store_peer import storage_scp

from dicom_node.config_results import Destination
from dicom_node.models import OutboxItem
from dicom_node.send import peers
from dicom_node.send.echo import echo
from dicom_node.send.peers import Delivery, is_stored

SR = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
STUDY = "1.2.826.0.1.3680043.8.498.77"
CALLING = "TRIAGE"
_ids = count(1)


def result_file(spool: Path, sop_class: str, study: str = STUDY) -> OutboxItem:
    """A valid result object of ``sop_class`` written into the spool, as an outbox row."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "PHANTOM^TEST"
    ds.PatientID = "PHANTOM-0001"
    ds.StudyDate = "20240101"
    ds.Modality = "SR" if sop_class == SR else "OT"
    if sop_class == SR:
        ds.ValueType = "CONTAINER"
        ds.CompletionFlag = "COMPLETE"
        ds.VerificationFlag = "UNVERIFIED"
    else:
        ds.ConversionType = "WSD"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = np.arange(64, dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    relative = f"outputs/{study}/{ds.SOPInstanceUID}.dcm"
    (spool / relative).parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(spool / relative, ds, enforce_file_format=True)
    return OutboxItem(
        id=next(_ids),
        job_id=1,
        study_uid=study,
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=sop_class,
        path=relative,
        destination="pacs",
        state="pending",
        attempts=0,
        next_attempt_at=0.0,
        last_error=None,
        created_at=0.0,
        sent_at=None,
    )


def send_dicom(*args: Any) -> list[Delivery]:
    """Every delivery of a batch (the functions yield them one by one)."""
    return list(peers.send_dicom(*args))


def copy_to_folder(*args: Any) -> list[Delivery]:
    return list(peers.copy_to_folder(*args))


def dicom_destination(port: int, ae_title: str = "PACS") -> Destination:
    return Destination(name="pacs", ae_title=ae_title, host="127.0.0.1", port=port)


# --- send_dicom --------------------------------------------------------------


def test_success_delivers_every_item_over_one_association(tmp_path: Path) -> None:
    items = [result_file(tmp_path, SR), result_file(tmp_path, SC), result_file(tmp_path, SR)]
    with storage_scp() as peer:
        deliveries = send_dicom(dicom_destination(peer.port), items, tmp_path, CALLING, 10)
    assert [(d.item, d.ok, d.detail) for d in deliveries] == [(i, True, "0x0000") for i in items]
    assert peer.received == [(CALLING, i.sop_class_uid, i.sop_instance_uid) for i in items]
    assert peer.associations == 1


@pytest.mark.parametrize("status", [0xB000, 0xB006, 0xB007, 0xB001, 0xBFFF, 0x0001], ids=hex)
def test_warning_status_counts_as_delivered(tmp_path: Path, status: int) -> None:
    items = [result_file(tmp_path, SR), result_file(tmp_path, SC)]
    with storage_scp(status=status) as peer:
        deliveries = send_dicom(dicom_destination(peer.port), items, tmp_path, CALLING, 10)
    assert [(d.ok, d.detail) for d in deliveries] == [(True, f"0x{status:04X}")] * 2
    assert len(peer.received) == 2


@pytest.mark.parametrize("status", [0xA700, 0xA900, 0xC000], ids=hex)
def test_failure_status_is_not_delivered_and_names_the_status(tmp_path: Path, status: int) -> None:
    items = [result_file(tmp_path, SR), result_file(tmp_path, SC)]
    with storage_scp(status=status) as peer:
        deliveries = send_dicom(dicom_destination(peer.port), items, tmp_path, CALLING, 10)
    assert [d.ok for d in deliveries] == [False, False]
    for delivery in deliveries:
        assert delivery.detail == (
            f"pacs (PACS@127.0.0.1:{peer.port}) answered failure 0x{status:04X}"
        )
    assert len(peer.received) == 2  # each was tried: one failure does not end the batch


def test_is_stored_follows_ps3_7_annex_c() -> None:
    stored = [0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB001, 0xB006, 0xB007, 0xBFFF]
    failed = [0xA700, 0xA7FF, 0xA900, 0xC000, 0xCFFF, 0x0110, 0x0122, 0x0211, 0xFE00]
    assert all(is_stored(code) for code in stored)
    assert not any(is_stored(code) for code in failed)


def test_a_host_that_never_answers_costs_the_timeout_not_the_os_connect_timeout(
    tmp_path: Path,
) -> None:
    # A listening socket with a full backlog: SYNs go unanswered, as with a firewall that
    # drops them. Without AE.connection_timeout, connect() waits for the OS (~2 minutes).
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue (its length is backlog + 1 or so)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            time.sleep(0.2)
            started = time.monotonic()
            deliveries = send_dicom(
                dicom_destination(port), [result_file(tmp_path, SR)], tmp_path, CALLING, 1.0
            )
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert [d.ok for d in deliveries] == [False]
    assert elapsed < 5.0


def test_status_is_checked_per_item(tmp_path: Path) -> None:
    items = [result_file(tmp_path, SR) for _ in range(3)]
    with storage_scp() as peer:
        peer.script = [0x0000, 0xA700, 0xB000]
        deliveries = send_dicom(dicom_destination(peer.port), items, tmp_path, CALLING, 10)
    assert [(d.ok, d.detail[-6:]) for d in deliveries] == [
        (True, "0x0000"),
        (False, "0xA700"),
        (True, "0xB000"),
    ]


def test_nothing_listening_fails_every_item_naming_the_association(tmp_path: Path) -> None:
    items = [result_file(tmp_path, SR), result_file(tmp_path, SC)]
    port = free_port()  # nothing listens there
    deliveries = send_dicom(dicom_destination(port), items, tmp_path, CALLING, 5)
    assert [d.item for d in deliveries] == items
    assert [d.ok for d in deliveries] == [False, False]
    for delivery in deliveries:
        # Was "... aborted": the admin looked for a PACS that aborts, not one that is down.
        assert delivery.detail == (
            f"association to pacs (PACS@127.0.0.1:{port}) got no answer (connection refused, "
            "the peer down or unreachable, or silent for the timeout; or a TLS-only port, and "
            "the node sends plain TCP)"
        )


def test_rejected_association_fails_every_item(tmp_path: Path) -> None:
    items = [result_file(tmp_path, SR), result_file(tmp_path, SC)]
    with storage_scp(ae_title="OTHER", require_called_aet=True) as peer:
        deliveries = send_dicom(dicom_destination(peer.port), items, tmp_path, CALLING, 10)
    assert [d.ok for d in deliveries] == [False, False]
    for delivery in deliveries:
        # Why, as the peer said it: the admin fixes the AE title.
        assert delivery.detail == (
            f"association to pacs (PACS@127.0.0.1:{peer.port}) rejected (rejected permanent, "
            "service user: called ae title not recognised)"
        )
    assert peer.received == []
    assert peer.associations == 0


def test_missing_or_unreadable_file_fails_and_the_rest_is_delivered(tmp_path: Path) -> None:
    # Each damaged file fails its own item only, whatever pydicom or pynetdicom raise.
    good = result_file(tmp_path, SR)
    missing = result_file(tmp_path, SC)
    (tmp_path / missing.path).unlink()
    garbage = result_file(tmp_path, SR)
    (tmp_path / garbage.path).write_bytes(b"not a DICOM file at all" * 10)
    truncated = result_file(tmp_path, SC)
    data = (tmp_path / truncated.path).read_bytes()
    (tmp_path / truncated.path).write_bytes(data[:152])  # inside the File Meta group
    no_class = result_file(tmp_path, SC)
    ds = dcmread(tmp_path / no_class.path)
    del ds.SOPClassUID  # pynetdicom refuses it when sending
    dcmwrite(tmp_path / no_class.path, ds)
    last = result_file(tmp_path, SC)
    items = [good, missing, garbage, truncated, no_class, last]
    with storage_scp() as peer:
        deliveries = send_dicom(dicom_destination(peer.port), items, tmp_path, CALLING, 10)
    assert [d.ok for d in deliveries] == [True, False, False, False, False, True]
    assert deliveries[1].detail.startswith(f"cannot read {missing.path}: ")
    assert "No such file" in deliveries[1].detail
    assert deliveries[2].detail.startswith(f"cannot read {garbage.path}: ")
    assert deliveries[3].detail.startswith(f"cannot read {truncated.path}: error: ")
    assert deliveries[4].detail.startswith(f"cannot send {no_class.path} to pacs")
    assert [r[2] for r in peer.received] == [good.sop_instance_uid, last.sop_instance_uid]


def test_peer_that_does_not_answer_in_time_fails_the_rest(tmp_path: Path) -> None:
    items = [result_file(tmp_path, SR), result_file(tmp_path, SR)]
    with storage_scp(delay=2.0) as peer:
        started = time.monotonic()
        deliveries = send_dicom(dicom_destination(peer.port), items, tmp_path, CALLING, 0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 1.9
    assert [d.ok for d in deliveries] == [False, False]
    where = f"pacs (PACS@127.0.0.1:{peer.port})"
    assert deliveries[0].detail == f"no C-STORE response from {where}"
    assert deliveries[1].detail == f"association to {where} ended"
    # The first was offered and failed; the second never reached the peer: not charged.
    assert [d.counts_as_attempt for d in deliveries] == [True, False]


def test_an_abort_seen_only_once_the_next_send_starts_is_not_charged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The peer aborts after the first object; pynetdicom's reactor often takes the A-ABORT
    # in after send_dicom's check of the association and before send_c_store, which then
    # refuses to start (RuntimeError). That second object never reached the peer: it was
    # charged an attempt, as "cannot send ...: RuntimeError".
    items = [result_file(tmp_path, SR), result_file(tmp_path, SC)]
    send = Association.send_c_store
    sends = count()

    def abort_before_the_second(assoc: Association, ds: Dataset, *args: Any, **kw: Any) -> Any:
        if next(sends) == 1:
            assoc.abort()  # as the reactor would, between the check and the send
        return send(assoc, ds, *args, **kw)

    monkeypatch.setattr(Association, "send_c_store", abort_before_the_second)
    with storage_scp() as peer:
        deliveries = send_dicom(dicom_destination(peer.port), items, tmp_path, CALLING, 5.0)
    where = f"pacs (PACS@127.0.0.1:{peer.port})"
    assert [(d.ok, d.detail, d.counts_as_attempt) for d in deliveries] == [
        (True, "0x0000", True),
        (False, f"association to {where} ended", False),
    ]


def large_overlay(spool: Path, edge: int) -> OutboxItem:
    """A Secondary Capture of ``edge`` x ``edge`` RGB pixels, as an outbox row."""
    item = result_file(spool, SC)
    ds = dcmread(spool / item.path)
    ds.Rows = ds.Columns = edge
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.zeros(edge * edge * 3, np.uint8).tobytes()
    dcmwrite(spool / item.path, ds, enforce_file_format=True)
    return item


def test_a_peer_that_stops_reading_fails_the_item_within_the_timeout(tmp_path: Path) -> None:
    item = large_overlay(tmp_path, 2048)  # 12 MB: more than the kernels' buffers hold
    with storage_scp() as peer, link_proxy(peer.port, stall_after=100_000) as port:
        started = time.monotonic()
        [delivery] = send_dicom(dicom_destination(port), [item], tmp_path, CALLING, 1.0)
        elapsed = time.monotonic() - started
    # Was: the send never returned (pynetdicom's reactor blocked in send() for good, and
    # the abort after the DIMSE timeout waited for it): the row stayed pending, unattempted.
    assert not delivery.ok and delivery.counts_as_attempt
    assert delivery.detail == f"no C-STORE response from pacs (PACS@127.0.0.1:{port})"
    assert elapsed < 10
    assert peer.received == []


def test_a_slow_link_that_keeps_moving_delivers(tmp_path: Path) -> None:
    item = large_overlay(tmp_path, 384)  # 442 KB at 150 KB/s: ~3 s, over the 1 s timeout
    with storage_scp() as peer, link_proxy(peer.port, rate=150_000) as port:
        started = time.monotonic()
        [delivery] = send_dicom(dicom_destination(port), [item], tmp_path, CALLING, 1.0)
        elapsed = time.monotonic() - started
    # Was "no C-STORE response": the timeout ran from the request's first byte.
    assert (delivery.ok, delivery.detail) == (True, "0x0000")
    assert elapsed > 2
    assert [r[2] for r in peer.received] == [item.sop_instance_uid]


def test_peer_refusing_one_sop_class_fails_that_item_only(tmp_path: Path) -> None:
    sr, sc = result_file(tmp_path, SR), result_file(tmp_path, SC)
    with storage_scp(contexts=(SR,)) as peer:
        deliveries = send_dicom(dicom_destination(peer.port), [sr, sc], tmp_path, CALLING, 10)
    assert [d.ok for d in deliveries] == [True, False]
    assert SC in deliveries[1].detail or "Secondary Capture" in deliveries[1].detail


def test_a_peer_accepting_none_of_the_classes_says_which_it_refused(tmp_path: Path) -> None:
    # pynetdicom aborts an association with no accepted context: the batch of overlays to a
    # PACS that takes no Secondary Capture read "aborted", as a PACS that is down.
    with storage_scp(contexts=(SR,)) as peer:
        deliveries = send_dicom(
            dicom_destination(peer.port), [result_file(tmp_path, SC)], tmp_path, CALLING, 10
        )
        assert echo(dicom_destination(peer.port), CALLING, 5) == (
            "association accepted none of the proposed SOP classes: 1.2.840.10008.1.1 "
            "(Verification SOP Class)"
        )
    assert [d.ok for d in deliveries] == [False]
    assert deliveries[0].detail == (
        f"association to pacs (PACS@127.0.0.1:{peer.port}) accepted none of the proposed SOP "
        f"classes: {SC} (Secondary Capture Image Storage)"
    )


# --- copy_to_folder ----------------------------------------------------------


def folder_destination(path: Path | None, make: bool = True) -> Destination:
    """A folder destination; its folder made unless ``make`` is False."""
    if make and path is not None:
        path.mkdir(parents=True, exist_ok=True)
    return Destination(name="archive", type="folder", path=path)


def test_copy_to_folder_writes_study_and_sop_atomically(tmp_path: Path) -> None:
    spool, target = tmp_path / "spool", tmp_path / "archive"
    items = [result_file(spool, SR), result_file(spool, SC), result_file(spool, SR, study="1.9")]
    deliveries = copy_to_folder(folder_destination(target), items, spool)
    for item, delivery in zip(items, deliveries, strict=True):
        written = target / item.study_uid / f"{item.sop_instance_uid}.dcm"
        assert (delivery.item, delivery.ok, delivery.detail) == (item, True, str(written))
        assert written.read_bytes() == (spool / item.path).read_bytes()
        assert dcmread(written).SOPInstanceUID == item.sop_instance_uid
    assert sorted(p.name for p in target.rglob("*")) == sorted(
        [STUDY, "1.9", *(f"{i.sop_instance_uid}.dcm" for i in items)]
    )
    assert list(target.rglob("*.tmp")) == []


def test_copy_to_folder_replaces_an_earlier_copy(tmp_path: Path) -> None:
    spool, target = tmp_path / "spool", tmp_path / "archive"
    item = result_file(spool, SR)
    written = target / item.study_uid / f"{item.sop_instance_uid}.dcm"
    written.parent.mkdir(parents=True)
    written.write_bytes(b"stale")
    [delivery] = copy_to_folder(folder_destination(target), [item], spool)
    assert delivery.ok
    assert written.read_bytes() == (spool / item.path).read_bytes()


def test_a_folder_that_is_not_there_fails_each_delivery_and_is_not_made(tmp_path: Path) -> None:
    # A share not mounted: its mount point was filled with results on the local disk, each
    # marked sent.
    spool, share = tmp_path / "spool", tmp_path / "mnt" / "share"
    items = [result_file(spool, SR), result_file(spool, SC)]
    deliveries = copy_to_folder(folder_destination(share, make=False), items, spool)
    assert [(d.ok, d.detail) for d in deliveries] == [
        (False, f"folder {share} does not exist (a share not mounted?): the node makes only "
                "the study folders in it"),
    ] * 2  # fmt: skip
    assert not (tmp_path / "mnt").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file, not a folder")
    [delivery] = copy_to_folder(folder_destination(blocker, make=False), items[:1], spool)
    assert not delivery.ok and delivery.detail.startswith(f"folder {blocker} is not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_a_failed_delivery(tmp_path: Path) -> None:
    spool, target = tmp_path / "spool", tmp_path / "archive"
    item = result_file(spool, SR)
    target.mkdir()
    target.chmod(0o500)
    try:
        [delivery] = copy_to_folder(folder_destination(target), [item], spool)
    finally:
        target.chmod(0o700)
    assert not delivery.ok
    assert "Permission denied" in delivery.detail


def test_missing_spool_file_is_a_failed_copy(tmp_path: Path) -> None:
    spool, target = tmp_path / "spool", tmp_path / "archive"
    gone, kept = result_file(spool, SR), result_file(spool, SC)
    (spool / gone.path).unlink()
    deliveries = copy_to_folder(folder_destination(target), [gone, kept], spool)
    assert [d.ok for d in deliveries] == [False, True]
    assert deliveries[0].detail == f"cannot read {gone.path}: no such file"
    assert list(target.rglob("*.tmp")) == []


def test_folder_destination_without_a_path_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"^destination archive: a folder destination needs a path$"
    ):
        copy_to_folder(folder_destination(None), [result_file(tmp_path, SR)], tmp_path)


def test_copy_to_folder_makes_the_rename_and_a_new_study_folder_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, target = tmp_path / "spool", tmp_path / "archive"
    first, second = result_file(spool, SR), result_file(spool, SC)
    synced: list[Path] = []
    monkeypatch.setattr(peers, "fsync_dir", synced.append)
    assert [d.ok for d in copy_to_folder(folder_destination(target), [first, second], spool)] == [
        True,
        True,
    ]
    study = target / STUDY
    assert synced == [study, target, study]  # the new folder's entry once, each rename
    assert sorted(p.name for p in study.iterdir()) == sorted(
        f"{i.sop_instance_uid}.dcm" for i in (first, second)
    )
