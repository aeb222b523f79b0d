"""The sender over a real state, a real folder and a real pynetdicom Storage SCP on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from orthanc import free_port, wait_for
from prometheus_client import CollectorRegistry
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from store_peer import storage_scp

from dicom_node.config import AssemblyConfig
from dicom_node.config_results import Destination, SendingConfig
from dicom_node.errors import StateError
from dicom_node.metrics import Metrics
from dicom_node.models import Header, OutboxItem, ReceivedInstance, ResultObject
from dicom_node.send.outbox import Outbox
from dicom_node.send.peers import Delivery
from dicom_node.send.sender import Sender
from dicom_node.state import State

SR = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
STUDY = "1.2.826.0.1.3680043.8.498.88"
CALLING = "TRIAGE"
RULES = AssemblyConfig(quiet_seconds=5, after_release_seconds=1, max_wait_seconds=60)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


def write_result(spool: Path, sop_class: str) -> ResultObject:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "PHANTOM^TEST"
    ds.PatientID = "PHANTOM-0001"
    ds.Modality = "SR" if sop_class == SR else "OT"
    if sop_class == SC:
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(16))
    else:
        ds.ValueType = "CONTAINER"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    relative = f"outputs/{STUDY}/{ds.SOPInstanceUID}.dcm"
    (spool / relative).parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(spool / relative, ds, enforce_file_format=True)
    return ResultObject(
        str(ds.SOPInstanceUID), sop_class, relative, "sr" if sop_class == SR else "sc"
    )


def queue_results(
    state: State, results: Sequence[ResultObject], destinations: Sequence[str], now: float
) -> None:
    """A job for STUDY, done at ``now``, whose results are queued for ``destinations``."""
    header = Header(
        "1.2.840.10008.5.1.4.1.1.1", STUDY + ".1", STUDY, STUDY + ".2", "DX", "", "", True
    )
    received = ReceivedInstance(
        header, ExplicitVRLittleEndian, "PACS", "a#1", "instances/x.dcm", 10, now - 50, False
    )
    state.record_instance(received, True, "new")
    state.release({STUDY}, now - 50)
    [job] = state.complete_due(now - 10)
    state.finish_job(job.id, "done", now, results=results, destinations=destinations)


def dicom_destination(port: int) -> Destination:
    return Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)


def sender_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.split(":")[0] == "sender"]


@contextmanager
def silent_peer() -> Iterator[int]:
    """A port whose listener completes TCP handshakes and never answers: a hanging PACS."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        yield listener.getsockname()[1]


def archive_folder(tmp_path: Path) -> Path:
    """The folder a folder destination delivers into (made: the node makes none)."""
    folder = tmp_path / "archive"
    folder.mkdir(exist_ok=True)
    return folder


def test_send_due_delivers_to_a_folder_and_a_peer_and_marks_sent(
    state: State, spool: Path, tmp_path: Path
) -> None:
    results = [write_result(spool, SR), write_result(spool, SC)]
    now = time.time()
    queue_results(state, results, ["archive", "pacs"], now)
    outbox = Outbox(state, SendingConfig(timeout_seconds=10))
    archive = tmp_path / "archive"
    archive.mkdir()
    sent: list[tuple[OutboxItem, float]] = []
    with storage_scp() as peer:
        sender = Sender(
            outbox,
            [
                Destination(name="archive", type="folder", path=archive),
                dicom_destination(peer.port),
            ],
            spool,
            CALLING,
            on_sent=lambda item, at: sent.append((item, at)),
        )
        assert sender.send_due(now) == 4
        assert sender.send_due(time.time()) == 0  # nothing left to send
    assert outbox.depth() == {"pending": 0, "sent": 4, "dead": 0}
    for item in outbox.items(["sent"]):
        assert (item.attempts, item.last_error) == (1, None)
        assert item.sent_at is not None and item.sent_at >= now
    assert sorted(peer.received) == sorted(
        (CALLING, r.sop_class_uid, r.sop_instance_uid) for r in results
    )
    assert peer.associations == 1  # one association per destination and round
    for r in results:
        assert (archive / STUDY / f"{r.sop_instance_uid}.dcm").read_bytes() == (
            spool / r.path
        ).read_bytes()
    assert sorted((i.destination, i.sop_instance_uid) for i, _ in sent) == sorted(
        (d, r.sop_instance_uid) for d in ("archive", "pacs") for r in results
    )
    assert all(at >= now for _, at in sent)


def test_unconfigured_destination_fails_with_not_configured(state: State, spool: Path) -> None:
    now = time.time()
    queue_results(state, [write_result(spool, SR)], ["ghost"], now)
    outbox = Outbox(state, SendingConfig(backoff_seconds=60, max_backoff_seconds=60))
    sent: list[OutboxItem] = []
    sender = Sender(outbox, [], spool, CALLING, on_sent=lambda item, at: sent.append(item))
    assert sender.send_due(now) == 0
    [item] = outbox.items()
    assert (item.state, item.attempts) == ("pending", 1)
    assert item.last_error == "destination 'ghost' is not configured"
    assert item.next_attempt_at >= now + 30  # backed off
    assert outbox.due(time.time()) == []
    assert sent == []


def test_failure_status_backs_off_then_becomes_a_dead_letter(state: State, spool: Path) -> None:
    now = time.time()
    queue_results(state, [write_result(spool, SR)], ["pacs"], now)
    outbox = Outbox(state, SendingConfig(max_attempts=2, backoff_seconds=0, max_backoff_seconds=0))
    with storage_scp(status=0xA700) as peer:
        sender = Sender(outbox, [dicom_destination(peer.port)], spool, CALLING)
        assert sender.send_due(time.time()) == 0
        [item] = outbox.items(["pending"])
        assert item.attempts == 1
        assert item.last_error is not None and "failure 0xA700" in item.last_error
        assert sender.send_due(time.time()) == 0
    [dead] = outbox.items(["dead"])
    assert dead.attempts == 2
    assert dead.last_error is not None and "failure 0xA700" in dead.last_error
    assert len(peer.received) == 2


def test_one_destination_down_does_not_hold_back_another(
    state: State, spool: Path, tmp_path: Path
) -> None:
    now = time.time()
    results = [write_result(spool, SR), write_result(spool, SC)]
    queue_results(state, results, ["pacs", "archive"], now)
    outbox = Outbox(state, SendingConfig(timeout_seconds=5))
    destinations = [
        dicom_destination(free_port()),  # nothing listens
        Destination(name="archive", type="folder", path=archive_folder(tmp_path)),
    ]
    sender = Sender(outbox, destinations, spool, CALLING)
    assert sender.send_due(now) == 2
    assert {(i.destination, i.state) for i in outbox.items()} == {
        ("archive", "sent"),
        ("pacs", "pending"),
    }
    for item in outbox.items(["pending"]):
        assert item.last_error is not None and "association" in item.last_error


def test_a_hanging_destination_holds_back_only_its_own_rows(
    state: State, spool: Path, tmp_path: Path
) -> None:
    results = [write_result(spool, SR), write_result(spool, SC)]
    outbox = Outbox(state, SendingConfig(timeout_seconds=5, backoff_seconds=60))
    sent: list[tuple[str, float]] = []
    with silent_peer() as port, storage_scp() as peer:
        destinations = [
            dicom_destination(port),  # "pacs": accepts the connection, never answers
            Destination(name="backup", ae_title="BACKUP", host="127.0.0.1", port=peer.port),
            Destination(name="archive", type="folder", path=archive_folder(tmp_path)),
        ]
        sender = Sender(
            outbox, destinations, spool, CALLING,
            on_sent=lambda item, at: sent.append((item.destination, at)),
        )  # fmt: skip
        assert [t.name for t in sender_threads()] == []
        sender.start()
        try:
            assert sorted(t.name for t in sender_threads()) == [
                "sender", "sender:archive", "sender:backup", "sender:pacs"
            ]  # fmt: skip
            queued_at = time.time()
            queue_results(state, results, ["pacs", "backup", "archive"], queued_at)
            sender.wake()
            wait_for(lambda: len(sent) == 4, 2.5, "the two healthy destinations")
            # Delivered while the silent peer still held its lane in the association request.
            assert max(at for _, at in sent) - queued_at < 2.5
            assert sorted(d for d, _ in sent) == ["archive", "archive", "backup", "backup"]
            assert {i.state for i in outbox.items() if i.destination == "pacs"} == {"pending"}
            wait_for(
                lambda: all(i.attempts == 1 for i in outbox.items(["pending"])), 8, "the timeout"
            )
        finally:
            started = time.monotonic()
            sender.stop()
            stopped_in = time.monotonic() - started
    assert sender_threads() == []
    assert stopped_in < 2
    pending = outbox.items(["pending"])
    assert {i.destination for i in pending} == {"pacs"} and len(pending) == 2
    for item in pending:
        assert item.last_error is not None and "association" in item.last_error
    assert sorted(r[2] for r in peer.received) == sorted(r.sop_instance_uid for r in results)


def test_outage_backs_off_and_the_thread_delivers_once_the_peer_is_back(
    state: State, spool: Path
) -> None:
    port = free_port()
    results = [write_result(spool, SR), write_result(spool, SC)]
    queue_results(state, results, ["pacs"], time.time())
    cfg = SendingConfig(
        backoff_seconds=0.05, max_backoff_seconds=0.2, max_attempts=50, timeout_seconds=5
    )
    outbox = Outbox(state, cfg)
    sent: list[OutboxItem] = []
    sender = Sender(
        outbox, [dicom_destination(port)], spool, CALLING, on_sent=lambda i, at: sent.append(i)
    )
    sender.start()
    try:
        wait_for(lambda: all(i.attempts >= 3 for i in outbox.items()), 10, "three failed attempts")
        during = outbox.items()
        assert {i.state for i in during} == {"pending"}
        for item in during:
            assert item.last_error is not None and "association" in item.last_error
            assert item.last_error.endswith(f"(PACS@127.0.0.1:{port}) got no answer (connection "
                                            "refused, the peer down or unreachable, or silent "
                                            "for the timeout; or a TLS-only port, and the node "
                                            "sends plain TCP)")  # fmt: skip
        # Backoff: a few attempts a second, not a tight loop (0.05 .. 0.2 s apart).
        time.sleep(0.5)
        assert max(i.attempts for i in outbox.items()) < 20
        with storage_scp(port=port) as peer:
            sender.wake()
            wait_for(lambda: len(sent) == 2, 5, "both items delivered")
            time.sleep(0.3)  # a second delivery would show up here
        assert outbox.depth() == {"pending": 0, "sent": 2, "dead": 0}
        assert sorted(i.sop_instance_uid for i in sent) == sorted(
            r.sop_instance_uid for r in results
        )
        assert sorted(r[2] for r in peer.received) == sorted(r.sop_instance_uid for r in results)
        for item in outbox.items(["sent"]):
            assert item.attempts >= 4 and item.last_error is None
    finally:
        sender.stop()
    assert sender_threads() == []
    assert len(sent) == 2  # once per delivered item


def test_stop_joins_an_idle_thread_promptly(state: State, spool: Path) -> None:
    Sender(Outbox(state, SendingConfig()), [], spool, CALLING).stop()  # never started: a no-op
    sender = Sender(Outbox(state, SendingConfig()), [], spool, CALLING)
    sender.start()
    try:
        assert len(sender_threads()) == 1
        time.sleep(0.1)  # now waiting in its idle poll
    finally:
        started = time.monotonic()
        sender.stop()
    assert time.monotonic() - started < 0.9  # woken, not left to finish its 1 s poll
    assert sender_threads() == []


def test_wake_sends_new_work_without_waiting_for_the_idle_poll(
    state: State, spool: Path, tmp_path: Path
) -> None:
    outbox = Outbox(state, SendingConfig())
    sent: list[float] = []
    archive = Destination(name="archive", type="folder", path=archive_folder(tmp_path))
    sender = Sender(outbox, [archive], spool, CALLING, on_sent=lambda i, at: sent.append(at))
    sender.start()
    try:
        time.sleep(0.2)  # idle, polling every second
        queued_at = time.time()
        queue_results(state, [write_result(spool, SR)], ["archive"], queued_at)
        sender.wake()
        wait_for(lambda: sent, 5, "the folder copy")
        assert sent[0] - queued_at < 0.5
    finally:
        sender.stop()


def test_peer_refusing_a_sop_class_fails_only_that_item(state: State, spool: Path) -> None:
    now = time.time()
    queue_results(state, [write_result(spool, SR), write_result(spool, SC)], ["pacs"], now)
    outbox = Outbox(state, SendingConfig(backoff_seconds=60, max_backoff_seconds=60))
    with storage_scp(contexts=(SR,)) as peer:
        sender = Sender(outbox, [dicom_destination(peer.port)], spool, CALLING)
        assert sender.send_due(now) == 1
    assert {(i.sop_class_uid, i.state) for i in outbox.items()} == {(SR, "sent"), (SC, "pending")}


def test_a_round_that_raises_does_not_spin(state: State, spool: Path) -> None:
    queue_results(state, [write_result(spool, SR), write_result(spool, SC)], ["pacs"], time.time())
    outbox = Outbox(state, SendingConfig(backoff_seconds=0.5, max_backoff_seconds=0.5))
    with storage_scp(contexts=(SR,)) as peer:
        sender = Sender(outbox, [dicom_destination(peer.port)], spool, CALLING)
        sender.start()
        try:
            time.sleep(1.5)
        finally:
            sender.stop()
    assert [r[1] for r in peer.received] == [SR]  # stored once
    assert peer.associations <= 8  # one round per backoff, at most


def test_a_damaged_result_fails_itself_and_nothing_is_sent_twice(state: State, spool: Path) -> None:
    good, damaged, last = write_result(spool, SR), write_result(spool, SC), write_result(spool, SR)
    (spool / damaged.path).write_bytes((spool / damaged.path).read_bytes()[:152])
    now = time.time()
    queue_results(state, [good, damaged, last], ["pacs"], now)
    outbox = Outbox(state, SendingConfig(max_attempts=2, backoff_seconds=0, max_backoff_seconds=0))
    with storage_scp() as peer:
        sender = Sender(outbox, [dicom_destination(peer.port)], spool, CALLING)
        assert sender.send_due(now) == 2
        assert sender.send_due(time.time() + 1) == 0
    assert sorted(r[2] for r in peer.received) == sorted(
        [good.sop_instance_uid, last.sop_instance_uid]
    )
    [dead] = outbox.items(["dead"])
    assert (dead.sop_instance_uid, dead.attempts) == (damaged.sop_instance_uid, 2)
    assert dead.last_error is not None and dead.last_error.startswith(f"cannot read {damaged.path}")


def test_each_delivery_is_recorded_before_the_next_is_sent(
    state: State, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = [write_result(spool, SR) for _ in range(3)]
    now = time.time()
    queue_results(state, results, ["pacs"], now)
    outbox = Outbox(state, SendingConfig(timeout_seconds=10))
    real = outbox.mark_sent
    marked: list[int] = []

    def mark_sent_then_fail(item_id: int, at: float) -> None:
        if marked:
            raise StateError("database is locked")  # the state fails after one delivery
        real(item_id, at)
        marked.append(item_id)

    monkeypatch.setattr(outbox, "mark_sent", mark_sent_then_fail)
    with storage_scp() as peer:
        sender = Sender(outbox, [dicom_destination(peer.port)], spool, CALLING)
        with pytest.raises(StateError, match="database is locked"):
            sender.send_due(now)
        assert len(peer.received) == 2  # the third was never sent
        monkeypatch.setattr(outbox, "mark_sent", real)
        assert sender.send_due(time.time()) == 2  # the second (not recorded) and the third
    assert outbox.depth() == {"pending": 0, "sent": 3, "dead": 0}
    assert [r[2] for r in peer.received].count(results[0].sop_instance_uid) == 1


def test_time_to_result_is_not_measured_from_a_later_episode(
    state: State, spool: Path, tmp_path: Path
) -> None:
    now = time.time()
    queue_results(state, [write_result(spool, SR)], ["archive"], now - 100)
    # A late instance reopens the study before the SR goes out: its first instance is the new
    # episode's, later than this SR was queued, so the SR's wait is not known.
    header = Header("1.2.840.10008.5.1.4.1.1.1", STUDY + ".9", STUDY, STUDY + ".2", "DX", "", "",
                    True)  # fmt: skip
    late = ReceivedInstance(header, ExplicitVRLittleEndian, "PACS", "a#2", "i/9.dcm", 10, now - 5,
                            False)  # fmt: skip
    state.record_instance(late, True, "new")
    metrics = Metrics(CollectorRegistry())
    sender = Sender(
        Outbox(state, SendingConfig()),
        [Destination(name="archive", type="folder", path=archive_folder(tmp_path))],
        spool, CALLING, metrics=metrics,
    )  # fmt: skip
    assert sender.send_due(now) == 1
    count = metrics.registry.get_sample_value(
        "dicom_node_time_to_result_seconds_count", {"destination": "archive"}
    )
    assert count in (None, 0.0)


def an_sr_and_an_overlay(
    state: State, spool: Path, now: float, cfg: SendingConfig
) -> tuple[Outbox, Sender, OutboxItem, OutboxItem]:
    """STUDY's SR and one overlay queued for "pacs" (a closed port): the outbox, a sender
    whose delivery the test replaces, and the two rows."""
    queue_results(state, [write_result(spool, SR), write_result(spool, SC)], ["pacs"], now)
    outbox = Outbox(state, cfg)
    sender = Sender(outbox, [dicom_destination(free_port())], spool, CALLING)
    first, second = outbox.items()
    return outbox, sender, first, second


def test_items_the_peer_was_never_offered_are_not_charged(
    state: State, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = SendingConfig(max_attempts=2, backoff_seconds=60)
    outbox, sender, first, second = an_sr_and_an_overlay(state, spool, time.time(), cfg)

    def stored_then_aborted(name: str, batch: list[OutboxItem]) -> Iterator[Delivery]:
        yield Delivery(batch[0], True, "0x0000")
        for item in batch[1:]:  # the peer aborted after the first: never offered
            yield Delivery(item, False, "association to pacs ended", counts_as_attempt=False)

    monkeypatch.setattr(sender, "_deliver", stored_then_aborted)
    assert sender.send_due(time.time()) == 1
    after = {i.id: i for i in outbox.items()}
    assert after[first.id].state == "sent"
    # Not a failed attempt: still due now, for the next association (was: charged, and
    # after max_attempts such rounds a dead letter the peer never saw).
    assert (after[second.id].state, after[second.id].attempts) == ("pending", 0)
    assert [i.id for i in outbox.due(time.time())] == [second.id]


def test_items_left_by_a_failed_one_wait_out_its_backoff_uncharged(
    state: State, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = SendingConfig(backoff_seconds=60)
    outbox, sender, first, second = an_sr_and_an_overlay(state, spool, time.time(), cfg)

    def failed_then_aborted(name: str, batch: list[OutboxItem]) -> Iterator[Delivery]:
        yield Delivery(batch[0], False, "no C-STORE response")  # the peer aborted on it
        for item in batch[1:]:
            yield Delivery(item, False, "association to pacs ended", counts_as_attempt=False)

    monkeypatch.setattr(sender, "_deliver", failed_then_aborted)
    assert sender.send_due(time.time()) == 0
    after = {i.id: i for i in outbox.items()}
    assert after[first.id].attempts == 1
    assert after[second.id].attempts == 0
    assert after[second.id].next_attempt_at == after[first.id].next_attempt_at > time.time() + 30
    # Was: the second still due now, which made due() send the first again at once.
    assert outbox.due(time.time()) == []


def test_a_peer_that_aborts_every_store_gets_the_backoff_not_a_dead_letter_in_seconds(
    state: State, spool: Path
) -> None:
    results = [write_result(spool, SR), write_result(spool, SC), write_result(spool, SC)]
    queue_results(state, results, ["pacs"], time.time())
    outbox = Outbox(state, SendingConfig(max_attempts=3, backoff_seconds=60))
    with storage_scp(abort=True) as peer:
        sender = Sender(outbox, [dicom_destination(peer.port)], spool, CALLING)
        for _ in range(5):  # what the lane does while something is due
            sender.send_due(time.time())
    after = outbox.items()
    # Was: the first item offered in every round, a dead letter after three.
    assert [(i.state, i.attempts) for i in after] == [
        ("pending", 1),
        ("pending", 0),
        ("pending", 0),
    ]
    assert len(peer.received) == 1


def test_a_stop_that_closed_the_state_under_a_send_is_a_warning_not_a_traceback(
    state: State, spool: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    queue_results(state, [write_result(spool, SR)], ["pacs"], now)
    outbox = Outbox(state, SendingConfig())
    sender = Sender(outbox, [dicom_destination(free_port())], spool, CALLING)

    def outwaited_by_the_stop(name: str, batch: list[OutboxItem]) -> Iterator[Delivery]:
        for lane in sender.lanes:  # the node stopped the lanes, waited 10 s, closed the state
            lane.request_stop()
        state.close()
        yield Delivery(batch[0], True, "0x0000")  # the C-STORE answered after all that

    monkeypatch.setattr(sender, "_deliver", outwaited_by_the_stop)
    assert sender.send_due(time.time()) == 0  # was: StateError, a traceback at every such stop
    assert "outcome not recorded, the node stopped during the send" in caplog.text


def test_a_state_error_outside_a_stop_still_ends_the_round(
    state: State, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_results(state, [write_result(spool, SR)], ["pacs"], time.time())
    outbox = Outbox(state, SendingConfig())
    sender = Sender(outbox, [dicom_destination(free_port())], spool, CALLING)

    def answered(name: str, batch: list[OutboxItem]) -> Iterator[Delivery]:
        yield Delivery(batch[0], True, "0x0000")

    def locked(item_id: int, now: float) -> None:
        raise StateError("database is locked")

    monkeypatch.setattr(sender, "_deliver", answered)
    monkeypatch.setattr(outbox, "mark_sent", locked)
    with pytest.raises(StateError, match=r"^database is locked$"):  # the worker logs it
        sender.send_due(time.time())


def test_unanswered_names_the_item_on_the_wire(state: State, spool: Path) -> None:
    # A stop that outwaits a slow PACS names the object left without an answer (was: only
    # "exiting without 1 thread(s) still in a network call").
    results = [write_result(spool, SR), write_result(spool, SC)]
    outbox = Outbox(state, SendingConfig(timeout_seconds=10))
    with storage_scp(delay=1.0) as peer:
        sender = Sender(outbox, [dicom_destination(peer.port)], spool, CALLING)
        assert sender.unanswered() == []
        queue_results(state, results, ["pacs"], time.time())
        sender.start()
        try:
            first, second = outbox.items()
            wait_for(lambda: sender.unanswered() == [first] or None, 5, "the first C-STORE")
            wait_for(lambda: sender.unanswered() == [second] or None, 5, "the second C-STORE")
            wait_for(lambda: not outbox.items(["pending"]) or None, 5, "both answered")
            assert sender.unanswered() == []
        finally:
            sender.stop()


def test_a_row_sent_ahead_of_its_backoff_is_not_charged_for_failing(
    state: State, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SR, waiting out its backoff, goes along whenever one of its study's overlays is
    # due (Outbox.due); charged each time, it was a dead letter after ~31 minutes of an
    # outage (42-84 documented) while its overlays lasted longer.
    now = time.time()
    outbox, sender, sr, sc = an_sr_and_an_overlay(
        state, spool, now, SendingConfig(backoff_seconds=60)
    )
    waiting = outbox.mark_failed(sr.id, now, "association to pacs rejected")
    assert waiting.next_attempt_at > now + 20

    def refused(name: str, batch: list[OutboxItem]) -> Iterator[Delivery]:
        yield from (Delivery(i, False, "association to pacs rejected") for i in batch)

    monkeypatch.setattr(sender, "_deliver", refused)
    assert [i.id for i in outbox.due(now)] == [sr.id, sc.id]  # the SR goes along
    sender.send_due(now)
    after = {i.id: i for i in outbox.items()}
    assert (after[sr.id].attempts, after[sr.id].next_attempt_at) == (1, waiting.next_attempt_at)
    assert after[sc.id].attempts == 1
    # Both were offered and failed: both counted in the metric, though only one charged.
    failed = {"destination": "pacs", "result": "failed"}
    assert sender.metrics.registry.get_sample_value("dicom_node_send_attempts_total", failed) == 2
    # One never offered (the association ended before it) is not counted, early or not.

    def ended(name: str, batch: list[OutboxItem]) -> Iterator[Delivery]:
        yield from (Delivery(i, False, "association ended", counts_as_attempt=False) for i in batch)

    monkeypatch.setattr(sender, "_deliver", ended)
    sender.send_due(time.time() + 10**6)
    assert sender.metrics.registry.get_sample_value("dicom_node_send_attempts_total", failed) == 2
