"""Spool retention over a real state and spool: what is purged, what is kept, and when."""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from dicom_clients import send_files
from helpers import tiny_image
from prometheus_client import CollectorRegistry

from dicom_node import retention
from dicom_node.cli import main
from dicom_node.config import AssemblyConfig
from dicom_node.config_results import SendingConfig
from dicom_node.errors import StateError
from dicom_node.metrics import Metrics
from dicom_node.models import Header, ReceivedInstance, ResultObject
from dicom_node.node import Node
from dicom_node.retention import (
    BALLAST_BYTES,
    Purger,
    ballast_path,
    lay_ballast,
    purge_study,
    purgeable,
    sweep,
)
from dicom_node.send.outbox import Outbox
from dicom_node.spool import Spool
from dicom_node.state import State

RULES = AssemblyConfig(quiet_seconds=5, after_release_seconds=1, max_wait_seconds=60)
SR = "1.2.840.10008.5.1.4.1.1.88.34"
STUDY = "1.2.826.0.1.3680043.8.498.71"
OTHER = "1.2.826.0.1.3680043.8.498.72"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", 0)


@pytest.fixture
def state(spool: Spool) -> Iterator[State]:
    st = State(spool.root / "state.sqlite3", RULES)
    try:
        yield st
    finally:
        st.close()


def receive(state: State, spool: Spool, study: str, sop: str, at: float, own: bool = False) -> str:
    """Write an instance into the spool and index it, as the receiver does."""
    relative = spool.relative_path(study, sop)
    spool.write(relative, [b"instance " + sop.encode()])
    header = Header("1.2.840.10008.5.1.4.1.1.1", sop, study, study + ".1", "DX", "", "", True)
    received = ReceivedInstance(header, "1.2.840.10008.1.2.1", "PACS", "a#1", relative, 10, at, own)
    state.record_instance(received, True, "new")
    return relative


def processed(
    state: State,
    spool: Spool,
    study: str,
    at: float,
    destinations: Sequence[str] = ("pacs",),
    outcome: str = "done",
) -> list[str]:
    """Receive two instances at ``at``, complete the study, finish its job at ``at + 10``
    with one result queued for ``destinations``; returns every file written."""
    files = [receive(state, spool, study, f"{study}.{n}", at) for n in (1, 2)]
    state.release({study}, at)
    [job] = state.complete_due(at + 5)
    result = f"outputs/{study}/{study}.100.dcm"
    spool.write(result, [b"the study's SR"])
    state.finish_job(
        job.id, outcome, at + 10,
        results=[ResultObject(f"{study}.100", SR, result, "sr")], destinations=destinations,
    )  # fmt: skip
    return [*files, result]


def deliver_all(state: State, at: float) -> None:
    outbox = Outbox(state, SendingConfig())
    for item in outbox.items(["pending"]):
        outbox.mark_sent(item.id, at)


def test_a_delivered_study_is_purged_after_its_retention_and_its_history_stays(
    state: State, spool: Spool
) -> None:
    files = processed(state, spool, STUDY, 1000.0)
    deliver_all(state, 1020.0)
    assert purgeable(state, 1019.9) == []  # finished at its delivery, 1020
    assert purgeable(state, 1020.0) == [STUDY]
    purged = purge_study(state, spool, STUDY, 1020.0, now=5000.0)
    assert purged is not None
    assert (purged.study_uid, purged.files) == (STUDY, 3)
    assert purged.bytes == sum(len(b) for b in (b"instance " + f"{STUDY}.1".encode(),
                                                  b"instance " + f"{STUDY}.2".encode(),
                                                  b"the study's SR"))  # fmt: skip
    for relative in files:
        assert not spool.path(relative).exists()
    assert not (spool.instances / STUDY).exists()
    assert not (spool.root / "outputs" / STUDY).exists()
    [study] = state.studies()
    assert (study.state, study.instance_count, study.purged_at) == ("complete", 0, 5000.0)
    assert [j.state for j in state.jobs()] == ["done"]
    assert Outbox(state, SendingConfig()).items() == []
    assert state.indexed(f"{STUDY}.1") is None
    assert purgeable(state, 1e12) == []  # nothing left to purge
    assert purge_study(state, spool, STUDY, 1e12, now=6000.0) is None


def test_what_is_not_finished_is_kept(state: State, spool: Spool) -> None:
    receive(state, spool, "1.2", "1.2.1", 100.0)  # complete, its job pending
    state.release({"1.2"}, 100.0)
    state.complete_due(200.0)
    processed(state, spool, "1.3", 100.0)  # its result not delivered yet
    processed(state, spool, "1.4", 100.0)  # its result a dead letter
    outbox = Outbox(state, SendingConfig(max_attempts=1))
    [dead] = [i for i in outbox.items() if i.study_uid == "1.4"]
    outbox.mark_failed(dead.id, 150.0, "refused")
    processed(state, spool, "1.5", 100.0, destinations=())  # nothing to send: finished at 110
    processed(state, spool, "1.6", 100.0, (), outcome="failed")  # failed: kept as long
    receive(state, spool, "1.1", "1.1.1", 100.0)  # still receiving
    assert sorted(purgeable(state, 1e12)) == ["1.5", "1.6"]
    assert purgeable(state, 109.0) == []
    for study in ("1.1", "1.2", "1.3", "1.4"):
        assert purge_study(state, spool, study, 1e12, now=1e6) is None
        assert (spool.instances / study).is_dir()
    outbox.retry(200.0)  # the dead letter goes back to pending: still kept
    deliver_all(state, 300.0)  # now 1.3 and 1.4 are delivered
    assert sorted(purgeable(state, 1e12)) == ["1.3", "1.4", "1.5", "1.6"]
    assert purgeable(state, 299.0) == ["1.5", "1.6"]


def test_a_late_own_output_keeps_the_study_until_its_own_retention(
    state: State, spool: Spool
) -> None:
    processed(state, spool, STUDY, 100.0, destinations=())
    purge_study(state, spool, STUDY, 200.0, now=300.0)
    # The PACS sends our SR back after the purge: kept, then purged a retention later.
    back = receive(state, spool, STUDY, f"{STUDY}.100", 400.0, own=True)
    # Own outputs do not reopen the study; it has files again, so it is no longer purged.
    assert [(s.state, s.purged_at) for s in state.studies()] == [("complete", None)]
    assert purgeable(state, 399.0) == []
    assert purgeable(state, 400.0) == [STUDY]
    purged = purge_study(state, spool, STUDY, 400.0, now=500.0)
    assert purged is not None and purged.files == 1
    assert not spool.path(back).exists()


def test_own_results_of_a_study_this_node_never_saw_are_purged_after_the_retention(
    state: State, spool: Spool
) -> None:
    # Another node with the same software (or a reset state database): our Manufacturer on
    # results of a study with no row here. Indexed, never processed, and yet purged.
    other = "1.2.826.0.1.3680043.8.498.99"
    files = [receive(state, spool, other, f"{other}.{n}", 100.0 + n, own=True) for n in (1, 2)]
    processed(state, spool, STUDY, 500.0)  # a real study, not finished: kept
    assert state.studies()[0].study_uid == STUDY  # no row for the other study
    assert purgeable(state, 101.5) == []  # its newest instance is younger
    assert purgeable(state, 102.0) == [other]
    purged = purge_study(state, spool, other, 102.0, now=600.0)
    assert purged is not None and (purged.study_uid, purged.files) == (other, 2)
    assert not any(spool.path(f).exists() for f in files)
    assert not (spool.instances / other).exists()
    assert purgeable(state, 1e12) == []  # STUDY's result is still pending: kept
    # A study with a real instance is never purged as "own results only".
    receive(state, spool, other, f"{other}.3", 700.0, own=True)
    receive(state, spool, other, f"{other}.4", 700.0)
    assert purge_study(state, spool, other, 800.0, now=900.0) is None


def test_a_study_received_again_after_its_purge_is_a_new_episode(
    state: State, spool: Spool
) -> None:
    processed(state, spool, STUDY, 100.0, destinations=())
    purge_study(state, spool, STUDY, 200.0, now=300.0)
    receive(state, spool, STUDY, f"{STUDY}.9", 400.0)
    [study] = state.studies()
    assert (study.state, study.instance_count, study.purged_at) == ("receiving", 1, None)
    state.release({STUDY}, 400.0)
    [job] = state.complete_due(500.0)
    assert (job.generation, job.instance_count) == (2, 1)
    assert state.study_sources(STUDY) == [(f"instances/{STUDY}/{STUDY}.9.dcm", "PACS")]


def test_purge_waits_for_the_study_lock_and_spares_an_instance_indexed_meanwhile(
    state: State, spool: Spool
) -> None:
    processed(state, spool, STUDY, 100.0, destinations=())
    assert purgeable(state, 200.0) == [STUDY]
    outcome: list[object] = []
    with spool.study_lock(STUDY):  # as the receiver holds it while it writes and indexes
        purging = threading.Thread(
            target=lambda: outcome.append(purge_study(state, spool, STUDY, 200.0, now=300.0))
        )
        purging.start()
        time.sleep(0.2)
        assert outcome == [] and purging.is_alive()  # waiting for the lock
        late = spool.relative_path(STUDY, f"{STUDY}.3")
        spool.write(late, [b"acknowledged late instance"])
        header = Header(
            "1.2.840.10008.5.1.4.1.1.1", f"{STUDY}.3", STUDY, STUDY + ".1", "DX", "", "", True
        )
        state.record_instance(
            ReceivedInstance(header, "1.2.840.10008.1.2.1", "PACS", "a#2", late, 26, 250.0, False),
            True, "new",
        )  # fmt: skip
    purging.join(5)
    assert outcome == [None]  # reopened: no longer finished, nothing removed
    assert spool.path(late).read_bytes() == b"acknowledged late instance"
    assert len(state.study_sources(STUDY)) == 3
    assert [s.state for s in state.studies()] == ["receiving"]


def test_sweep_removes_only_files_no_row_names(state: State, spool: Spool) -> None:
    files = processed(state, spool, STUDY, 100.0, destinations=())
    purge_study(state, spool, STUDY, 200.0, now=300.0)
    # A crash after the purge's commit, before its unlinks, leaves files no row names.
    for relative in files:
        spool.write(relative, [b"left by a crash"])
    # A study the node has no record of: our own results back (named by rows, kept) and a
    # file no row names (a purge of such results cut short, or never acknowledged).
    rowless = "1.2.826.0.1.3680043.8.498.73"
    kept = receive(state, spool, rowless, f"{rowless}.1", 400.0, own=True)
    spool.write(f"instances/{rowless}/x.dcm", [b"stray"])
    processed(state, spool, OTHER, 100.0, destinations=())  # live: never swept
    spool.write(f"instances/{OTHER}/unindexed.dcm", [b"being stored"])
    swept = sweep(state, spool)
    assert (swept.files, swept.bytes) == (4, 3 * len(b"left by a crash") + len(b"stray"))
    assert [spool.path(r).exists() for r in files] == [False, False, False]
    assert not (spool.root / "outputs" / STUDY).exists()
    assert not (spool.instances / STUDY).exists()
    assert spool.path(kept).exists() and not spool.path(f"instances/{rowless}/x.dcm").exists()
    assert len(list((spool.instances / OTHER).iterdir())) == 3
    assert sweep(state, spool).files == 0


def test_sweep_leaves_a_study_reopened_since_its_purge_alone(state: State, spool: Spool) -> None:
    files = processed(state, spool, STUDY, 100.0, destinations=())
    purge_study(state, spool, STUDY, 200.0, now=300.0)
    late = receive(state, spool, STUDY, f"{STUDY}.9", 400.0)  # reopens it: a new episode
    result = f"outputs/{STUDY}/{STUDY}.200.dcm"  # its job's result, not yet committed
    spool.write(result, [b"the new SR"])
    assert sweep(state, spool).files == 0
    assert spool.path(late).exists() and spool.path(result).exists()
    assert not any(spool.path(f).exists() for f in files[:2])  # purged before: gone


def test_sweep_walks_the_spools_study_folders_not_the_purge_history(
    state: State, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    processed(state, spool, STUDY, 100.0, destinations=())
    purge_study(state, spool, STUDY, 200.0, now=300.0)  # history: a purged study, no folder
    processed(state, spool, OTHER, 100.0, destinations=())  # in the spool, not purged
    assert retention._spooled_studies(spool) == [OTHER]
    visited: list[str] = []
    study_folders = retention._study_folders

    def recording(spool: Spool, study_uid: str) -> tuple[Path, ...]:
        visited.append(study_uid)
        return study_folders(spool, study_uid)

    monkeypatch.setattr(retention, "_study_folders", recording)
    assert sweep(state, spool).files == 0
    assert visited == []  # neither the purged study without files nor the live one is read
    assert len(list((spool.instances / OTHER).iterdir())) == 2


def test_one_file_that_cannot_be_removed_does_not_stop_the_retention(
    state: State, spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = processed(state, spool, STUDY, 100.0, destinations=())
    stuck = spool.path(files[0])
    unlink = Path.unlink

    def refusing(path: Path, missing_ok: bool = False) -> None:
        if path == stuck:
            raise PermissionError(13, "Permission denied", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refusing)
    purged = purge_study(state, spool, STUDY, 200.0, now=300.0)
    assert purged is not None and purged.files == 2  # the other two went
    assert stuck.exists() and "cannot remove" in caplog.text and "Permission denied" in caplog.text
    assert sweep(state, spool).files == 0  # tried again, still refused: no exception
    monkeypatch.setattr(Path, "unlink", unlink)
    assert sweep(state, spool).files == 1 and not stuck.exists()


def test_a_folder_that_cannot_be_listed_does_not_stop_the_retention(
    state: State, spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A study folder the node cannot read (restored with another owner) raised out of every
    # round: no study was purged again, and the spool filled until every store got 0xA700.
    processed(state, spool, STUDY, 100.0, destinations=())
    processed(state, spool, OTHER, 100.0, destinations=())
    purge_study(state, spool, OTHER, 200.0, now=300.0)
    spool.write(f"instances/{OTHER}/left-by-a-crash.dcm", [b"orphan"])
    locked = spool.root / "outputs" / STUDY
    iterdir = Path.iterdir

    def refusing(path: Path) -> Iterator[Path]:
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return iterdir(path)

    monkeypatch.setattr(Path, "iterdir", refusing)
    assert sweep(state, spool).files == 1  # the other study's orphan still went
    purger = Purger(state, spool, 0.0)
    assert purger.purge_due(1000.0) == 1  # STUDY: its rows go, its readable files too
    assert not spool.path(f"instances/{STUDY}/{STUDY}.1.dcm").exists()
    assert spool.path(f"outputs/{STUDY}/{STUDY}.100.dcm").exists()  # left, and said so
    assert f"cannot list outputs/{STUDY} in the spool (Permission denied)" in caplog.text
    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert sweep(state, spool).files == 1  # readable again: the next start removes it


def test_a_folder_not_named_as_a_study_is_left_alone(
    state: State, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    # A name that is not a UID (not even UTF-8: study_lock() raised UnicodeEncodeError on it)
    # is no folder of the node's.
    processed(state, spool, STUDY, 100.0, destinations=())
    purge_study(state, spool, STUDY, 200.0, now=300.0)
    spool.write(f"instances/{STUDY}/left-by-a-crash.dcm", [b"orphan"])
    strange = spool.instances / "1.2.\udcff"
    admins = spool.instances / "lost+found"
    for folder in (strange, admins):
        folder.mkdir()
        (folder / "keep").write_bytes(b"not ours")
    assert retention._spooled_studies(spool) == [STUDY]
    assert sweep(state, spool).files == 1
    assert (strange / "keep").exists() and (admins / "keep").exists()
    assert "instances/'lost+found' in the spool is not a study folder; left alone" in caplog.text
    assert "instances/'1.2.\\udcff'" in caplog.text


def test_a_study_whose_instances_all_moved_has_its_results_purged(
    state: State, spool: Spool
) -> None:
    # A PACS correction re-sends every instance under another Study UID (same SOP UIDs): the
    # old study keeps no instance row; its results (no destination) must still leave.
    files = processed(state, spool, STUDY, 100.0, destinations=())
    for sop in (f"{STUDY}.1", f"{STUDY}.2"):
        receive(state, spool, OTHER, sop, 150.0)
    assert purgeable(state, 200.0) == [STUDY]
    purged = purge_study(state, spool, STUDY, 200.0, now=300.0)
    assert purged is not None and not spool.path(files[2]).exists()


def test_purger_thread_purges_due_studies_counts_them_and_stops(state: State, spool: Spool) -> None:
    now = time.time()
    processed(state, spool, STUDY, now - 7300.0, destinations=())  # finished ~2 h ago
    processed(state, spool, OTHER, now - 100.0, destinations=())  # finished 90 s ago
    metrics = Metrics(CollectorRegistry())
    purger = Purger(state, spool, retention_hours=1.0, metrics=metrics)
    assert purger.interval == 60.0
    assert Purger(state, spool, retention_hours=0.0).interval == 1.0
    purger.start()
    try:
        deadline = time.monotonic() + 5
        while not (state.studies()[0].purged_at or time.monotonic() > deadline):
            time.sleep(0.05)
    finally:
        purger.stop()
    assert not [t for t in threading.enumerate() if t.name == "purger"]
    purged = {s.study_uid: s.purged_at for s in state.studies()}
    assert purged[STUDY] is not None and purged[OTHER] is None
    assert not (spool.instances / STUDY).exists()
    assert (spool.instances / OTHER).is_dir()
    registry = metrics.registry
    assert registry.get_sample_value("dicom_node_purged_studies_total") == 1
    expected = sum(len(b"instance " + f"{STUDY}.{n}".encode()) for n in (1, 2))
    assert registry.get_sample_value("dicom_node_purged_bytes_total") == expected + len(
        b"the study's SR"
    )


def test_the_node_purges_a_finished_study_with_retention_zero(
    start_node: Callable[..., Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = start_node(storage__retention_hours=0)
    assert node.spool is not None and node.state is not None
    state, spool = node.state, node.spool
    folder = tmp_path / "in"
    folder.mkdir()
    files = []
    for _ in range(2):
        ds = tiny_image(STUDY)
        files.append(folder / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    assert send_files(node.port, files) == [0, 0]
    assert len(list((spool.instances / STUDY).iterdir())) == 2
    # No routing rules: the job is skipped, the study finished, purged within a round (1 s).
    deadline = time.monotonic() + 15
    while not (state.studies() and state.studies()[0].purged_at):
        assert time.monotonic() < deadline, "the study was not purged"
        time.sleep(0.1)
    [job] = state.jobs()
    assert job.state == "skipped"
    assert not (spool.instances / STUDY).exists()
    assert state.instance_count() == 0
    assert node.metrics.registry.get_sample_value("dicom_node_purged_studies_total") == 1
    assert main(["studies", "--spool-dir", str(spool.root)]) == 0
    header, row, *_ = capsys.readouterr().out.splitlines()
    assert header.split()[-2:] == ["REASON", "PURGED"]
    # The start of the latest episode (a late instance resets it): was headed FIRST RECEIVED.
    assert "EPISODE STARTED" in header and "FIRST" not in header
    assert row.split()[:3] == [STUDY, "complete", "0"]
    assert row.split()[-2] == time.strftime(
        "%Y-%m-%d", time.localtime(state.studies()[0].purged_at)
    )


def test_the_clock_check_reads_only_studies_with_files(state: State, spool: Spool) -> None:
    # Studies and jobs keep their rows after a purge: each round's check scanned every
    # study and job ever seen, holding the state lock (~250 ms at a million, each minute).
    plans = []
    with state.transaction() as db:
        for table, column, only in retention._CLOCKED:
            if table in ("jobs", "studies"):
                query = (
                    f"EXPLAIN QUERY PLAN UPDATE {table} SET {column} = 1 WHERE {column} > 1{only}"
                )
                plans += [str(row[-1]) for row in db.execute(query)]
    # Scans only of the index of studies with files (studies_unpurged), no other.
    scans = [p for p in plans if p.startswith("SCAN") and "INDEX studies_unpurged" not in p]
    assert plans and not scans, plans
    # A purged study's times are no longer read (its future ones are left as they were).
    processed(state, spool, STUDY, 5000.0)
    deliver_all(state, 5010.0)
    Purger(state, spool, 0.0).purge_due(6000.0)
    assert retention.clamp_future_times(state, 2000.0) == 0


def test_times_written_while_the_clock_ran_fast_do_not_hold_a_study_for_weeks(
    state: State, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    # Received and processed with the clock 30 days fast, then NTP set it back: the study
    # "finished" 30 days ahead, and a 72 h retention kept it for 33 days.
    month = 30 * 86400.0
    files = processed(state, spool, STUDY, 1000.0 + month)
    deliver_all(state, 1020.0 + month)
    processed(state, spool, OTHER, 900.0)  # honest times: left as they are
    deliver_all(state, 950.0)
    purger = Purger(state, spool, 72.0)
    now = 2000.0
    # Its 2 receipts, its job, its delivery, and the study's last receipt and completion.
    assert retention.clamp_future_times(state, now) == 6
    assert "6 receipt, job and delivery times were after the current time" in caplog.text
    assert retention.clamp_future_times(state, now) == 0
    # purgeable() takes the cutoff (now - retention): the study now finished at ``now``.
    assert purgeable(state, now - 1) == [OTHER]
    assert sorted(purgeable(state, now)) == sorted([OTHER, STUDY])
    assert purger.purge_due(now + 72 * 3600.0) == 2
    assert not any(spool.path(f).exists() for f in files)


def _full_disk(
    monkeypatch: pytest.MonkeyPatch, commits_failing: int, error_name: str = "SQLITE_FULL"
) -> None:
    """Make the purge's next ``commits_failing`` transactions fail as SQLite does on a full
    file system (the WAL cannot grow for the deleted rows; SQLITE_IOERR_WRITE for a quota)."""
    forget = retention._forget
    left = [commits_failing]

    def forget_or_full(*args: Any) -> list[str] | None:
        if left[0] > 0:
            left[0] -= 1
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorname = error_name  # type: ignore[attr-defined]
            raise error
        return forget(*args)

    monkeypatch.setattr(retention, "_forget", forget_or_full)


def test_a_spool_too_full_for_the_purges_commit_gives_up_the_ballast(
    state: State, spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The retention could free nothing on a full spool: the purge's commit failed ("database
    # or disk is full") every minute, and the node refused every instance until an admin
    # deleted files by hand.
    assert lay_ballast(spool) and ballast_path(spool).stat().st_size == BALLAST_BYTES
    files = processed(state, spool, STUDY, 1000.0)
    others = processed(state, spool, OTHER, 1000.0)
    deliver_all(state, 1020.0)
    _full_disk(monkeypatch, commits_failing=1)
    purged = purge_study(state, spool, STUDY, 1020.0, now=5000.0)
    assert purged is not None and purged.files == 3  # rows first, then files, as always
    assert not any(spool.path(f).exists() for f in files)
    assert [s.purged_at for s in state.studies() if s.study_uid == STUDY] == [5000.0]
    assert not ballast_path(spool).exists() and "ballast (8 MiB) was given up" in caplog.text
    # Used up: the next one fails as before, its rows and files left together.
    _full_disk(monkeypatch, commits_failing=1)
    with pytest.raises(StateError, match="database or disk is full"):
        purge_study(state, spool, OTHER, 1020.0, now=5000.0)
    assert all(spool.path(f).exists() for f in others) and purgeable(state, 1020.0) == [OTHER]
    assert "has no ballast left (used up, or never laid for want of room)" in caplog.text
    # Laid again once there is room (each round tries); a quota reached (EDQUOT) reads
    # SQLITE_IOERR_WRITE, not SQLITE_FULL: the ballast is given up for it too.
    Purger(state, spool, retention_hours=1.0).round()
    assert ballast_path(spool).stat().st_size == BALLAST_BYTES
    assert purgeable(state, 1e12) == []  # that round purged the other study too
    third = "1.2.826.0.1.3680043.8.498.73"
    processed(state, spool, third, 1000.0)
    deliver_all(state, 1020.0)
    _full_disk(monkeypatch, commits_failing=1, error_name="SQLITE_IOERR_WRITE")
    assert purge_study(state, spool, third, 1020.0, now=5000.0) is not None
    assert not ballast_path(spool).exists()


def test_the_ballast_is_not_laid_where_it_would_eat_into_the_reserve(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reserve (0 here) and the ballast, twice over, beside what admitted writes have yet
    # to write (it was laid under an instance the guard had let in, which then failed).
    monkeypatch.setattr(spool, "free_bytes", lambda: 2 * BALLAST_BYTES + 100)
    with spool.reserve(101):
        assert not lay_ballast(spool) and not ballast_path(spool).exists()
    assert lay_ballast(spool) and ballast_path(spool).stat().st_size == BALLAST_BYTES


def test_a_ballast_that_cannot_be_laid_is_a_warning_not_a_failed_round(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A read-only spool root refused the clean-up's unlink too, and that second error
    # failed the whole round (purges included) with a traceback each minute.
    def refused(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(retention.os, "posix_fallocate", refused)
    monkeypatch.setattr(Path, "unlink", refused)
    assert not lay_ballast(spool)
    assert "cannot lay the retention's ballast" in caplog.text
    assert "Read-only file system" in caplog.text
