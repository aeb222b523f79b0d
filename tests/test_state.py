from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_node import state as state_module
from dicom_node.config import AssemblyConfig
from dicom_node.errors import StateError
from dicom_node.models import Header, ReceivedInstance
from dicom_node.receive.header import is_valid_uid
from dicom_node.state import State

RULES = AssemblyConfig(quiet_seconds=5, after_release_seconds=1, max_wait_seconds=60)


def instance(study: str, sop: str, at: float, own: bool = False) -> ReceivedInstance:
    header = Header("1.2.840.10008.5.1.4.1.1.1", sop, study, study + ".1", "CR", "", "", True)
    return ReceivedInstance(header, "1.2.840.10008.1.2.1", "PACS", "a#1", f"i/{sop}", 10, at, own)


def test_study_completes_once_and_makes_one_job(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.1", "1.1.1", 100), True, "new")
    state.record_instance(instance("1.1", "1.1.2", 101), False, "new")
    assert state.next_due() == 106
    assert state.complete_due(105.9) == []
    jobs = state.complete_due(106)
    assert [(j.study_uid, j.generation, j.instance_count, j.reason) for j in jobs] == [
        ("1.1", 1, 2, "quiet")
    ]
    assert state.complete_due(200) == []
    assert [s.state for s in state.studies()] == ["complete"]


def test_a_held_study_waits_past_its_deadline_until_max_wait(tmp_path: Path) -> None:
    # Held: an instance of it is arriving (Receiver.receiving_studies).
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.1", "1.1.1", 100), True, "new")
    state.record_instance(instance("1.2", "1.2.1", 100), True, "new")
    jobs = state.complete_due(106, held={"1.1"})
    assert [j.study_uid for j in jobs] == ["1.2"]
    assert state.complete_due(159.9, held={"1.1"}) == []
    [job] = state.complete_due(160, held={"1.1"})  # max_wait_seconds: held no longer
    assert (job.study_uid, job.reason) == ("1.1", "max_wait")


def test_the_metrics_read_does_not_wait_behind_a_writer(tmp_path: Path) -> None:
    # Another process holding the database (an admin's sqlite3 shell): a writer of the node
    # waits up to busy_timeout (10 s) holding the state's lock, and the scrape's read waited
    # behind it, so /metrics went unanswered and the node was alerted as down.
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.1", "1.1.1", 100), True, "new")
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    writer = threading.Thread(
        target=state.record_instance, args=(instance("1.1", "1.1.2", 101), False, "new")
    )
    writer.start()
    time.sleep(0.3)  # the writer holds the state's lock, waiting on SQLite
    started = time.monotonic()
    studies, outbox = state.counts()
    took = time.monotonic() - started
    other.execute("ROLLBACK")
    other.close()
    writer.join(15)
    assert took < 2.0
    assert (studies, outbox) == ({"receiving": 1, "complete": 0}, {})
    state.close()


def test_release_and_recover_rearm_deadlines(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.1", "1.1.1", 100), True, "new")
    state.release({"1.1"}, 100.5)
    assert state.next_due() == 101.5
    state.record_instance(instance("1.2", "1.2.1", 200), True, "new")
    state.close()
    # Restart: the association carrying 1.2 is gone; both deadlines are recomputed.
    state = State(tmp_path / "s.db", RULES)
    assert state.recover(300) == 2
    summary = {s.study_uid: s for s in state.studies()}
    assert summary["1.2"].open_associations == 0
    assert summary["1.2"].due_at == 205  # quiet expired while down: due at once
    assert {j.study_uid for j in state.complete_due(300)} == {"1.1", "1.2"}


def test_late_instance_reopens_and_duplicate_does_not(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.1", "1.1.1", 100), True, "new")
    state.complete_due(200)
    outcome = state.record_instance(instance("1.1", "1.1.1", 300), True, "duplicate")
    assert (outcome.study_touched, outcome.study_reopened) == (False, False)
    outcome = state.record_instance(instance("1.1", "1.1.2", 300), True, "new")
    assert (outcome.study_touched, outcome.study_reopened) == (True, True)
    jobs = state.complete_due(400)
    assert [(j.generation, j.instance_count) for j in jobs] == [(2, 2)]


def test_own_outputs_are_indexed_but_never_make_a_study(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    outcome = state.record_instance(instance("1.9", "1.9.1", 100, own=True), True, "new")
    assert not outcome.study_touched
    assert state.studies() == []
    assert state.instance_count() == 1
    assert state.indexed("1.9.1").path == "i/1.9.1"  # type: ignore[union-attr]


def test_schema_version_mismatch_is_refused(tmp_path: Path) -> None:
    State(tmp_path / "s.db", RULES).close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(
        StateError,
        match=r"schema version 99, this node needs 5 \(written by a newer dicom-node: run that "
        r"release, or restore the backup taken before the upgrade\)$",
    ):
        State(tmp_path / "s.db", RULES)


def test_a_listing_of_a_newer_database_points_to_the_newer_release(tmp_path: Path) -> None:
    State(tmp_path / "s.db", RULES).close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    # Was "start the node once to migrate it": the node then refused it, a dead end.
    with pytest.raises(
        StateError,
        match=r"schema version 6, this node reads 5: it was written by a newer dicom-node: run "
        r"that release, or restore the backup taken before the upgrade$",
    ):
        State(tmp_path / "s.db", RULES, readonly=True)


def test_tables_without_a_schema_version_are_refused_not_stamped(tmp_path: Path) -> None:
    # An older node's first start killed after its tables, before its version: the next
    # start stamped them as current without migrating (no 'runs' column), and every job
    # query failed, start after start.
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, study_uid TEXT)")
    with pytest.raises(
        StateError,
        match=r"s\.db: holds the node's tables \(jobs\) but no schema version \(a first start "
        r"stopped before it recorded one\?\): refused rather than guessed; move it aside",
    ):
        State(tmp_path / "s.db", RULES)
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT * FROM meta").fetchall() == []  # left as it was


def test_a_new_database_gets_its_tables_and_version_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Killed(BaseException):
        pass

    original = state_module._statements
    calls = []

    def dying(script: str) -> Iterator[str]:
        for n, statement in enumerate(original(script)):
            calls.append(n)
            if n == 3 and script is state_module._SCHEMA:
                raise Killed  # a kill -9 after three of the tables
            yield statement

    monkeypatch.setattr(state_module, "_statements", dying)
    with pytest.raises(Killed):
        State(tmp_path / "s.db", RULES)
    monkeypatch.setattr(state_module, "_statements", original)
    with sqlite3.connect(tmp_path / "s.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta"}  # nothing half made
    State(tmp_path / "s.db", RULES).close()  # the next start makes it whole


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "s.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=r"cannot open the node's state database"):
        State(tmp_path / "s.db", RULES)


_V1_JOBS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, study_uid TEXT NOT NULL, generation INTEGER NOT NULL,
    created_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    instance_count INTEGER NOT NULL, reason TEXT NOT NULL, UNIQUE (study_uid, generation)
);
INSERT INTO jobs (study_uid, generation, created_at, instance_count, reason)
    VALUES ('1.2.3', 1, 10.0, 2, 'quiet');
"""


def test_a_version_1_database_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.executescript(_V1_JOBS)
    state = State(tmp_path / "s.db", RULES)
    [job] = state.jobs()
    assert (job.study_uid, job.state, job.priority, job.error) == ("1.2.3", "pending", None, None)
    state.finish_job(job.id, "skipped", 20.0, error="no engine")
    assert state.job(job.id).state == "skipped"
    state.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("5",)


def test_a_version_2_database_gains_purged_at_and_keeps_its_studies(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.9", "1.9.1", 100), True, "new")
    state.close()
    with sqlite3.connect(tmp_path / "s.db") as db:  # back to what version 2 wrote
        db.execute("DROP INDEX studies_unpurged")
        db.execute("ALTER TABLE studies DROP COLUMN purged_at")
        db.execute("ALTER TABLE jobs DROP COLUMN runs")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    state = State(tmp_path / "s.db", RULES)
    [study] = state.studies()
    assert (study.study_uid, study.instance_count, study.purged_at) == ("1.9", 1, None)
    state.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("5",)
        columns = [r[1] for r in db.execute("PRAGMA table_info(studies)")]
        assert columns[-1] == "purged_at"


def test_a_step_migrated_by_another_process_meanwhile_is_not_run_again(tmp_path: Path) -> None:
    State(tmp_path / "s.db", RULES).close()
    with sqlite3.connect(tmp_path / "s.db") as db:  # back to version 3
        db.execute("ALTER TABLE jobs DROP COLUMN runs")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process, inside its step 3 -> 4
    opened: list[object] = []

    def open_state() -> None:
        try:
            opened.append(State(tmp_path / "s.db", RULES))
        except StateError as exc:
            opened.append(exc)

    second = threading.Thread(target=open_state)
    second.start()
    time.sleep(0.3)  # it reads the version while waiting for the write lock
    other.execute("ALTER TABLE jobs ADD COLUMN runs INTEGER NOT NULL DEFAULT 0")
    other.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    other.execute("COMMIT")
    other.close()
    second.join(timeout=20)
    [state] = opened
    assert isinstance(state, State), state  # was: "duplicate column name: runs"
    state.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("5",)


def test_a_newer_database_is_refused_before_its_tables_are_touched(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    with pytest.raises(StateError, match=r"schema version 99, this node needs 5 \(written by a "):
        State(tmp_path / "s.db", RULES)
    with sqlite3.connect(tmp_path / "s.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta"}


def test_a_version_3_database_counts_job_runs_from_zero(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.9", "1.9.1", 100), True, "new")
    [job] = state.complete_due(200)
    state.close()
    with sqlite3.connect(tmp_path / "s.db") as db:  # back to what version 3 wrote
        db.execute("ALTER TABLE jobs DROP COLUMN runs")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    state = State(tmp_path / "s.db", RULES)
    assert state.job(job.id).runs == 0
    state.start_job(job.id, 300)
    state.start_job(job.id, 400)  # started again: the first run was cut short
    assert state.job(job.id).runs == 2
    state.job_ran_out(job.id)  # a run that left it pending on purpose (an engine retry)
    assert state.job(job.id).runs == 0


def test_a_version_4_database_unmarks_purged_studies_that_have_files_again(
    tmp_path: Path,
) -> None:
    # Version 4 left purged_at set when our own results came back for a purged study; from 5
    # on, purged_at is NULL exactly when the study has files (the retention relies on it).
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.9", "1.9.1", 100), True, "new")
    state.record_instance(instance("1.8", "1.8.1", 100), True, "new")
    state.close()
    with sqlite3.connect(tmp_path / "s.db") as db:  # as version 4 left them
        db.execute("UPDATE studies SET purged_at = 300")
        db.execute("DELETE FROM instances WHERE study_uid = '1.8'")  # purged, no files
        db.execute("DROP INDEX studies_unpurged")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    state = State(tmp_path / "s.db", RULES)
    assert {s.study_uid: s.purged_at for s in state.studies()} == {"1.9": None, "1.8": 300.0}
    state.close()


def test_finish_job_queues_each_result_once_per_destination(tmp_path: Path) -> None:
    from dicom_node.models import ResultObject

    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.9", "1.9.1", 100), True, "new")
    state.release({"1.9"}, 100.0)
    [job] = state.complete_due(1e9)
    results = [ResultObject("1.9.100", "1.2.840.10008.5.1.4.1.1.88.34", "outputs/a.dcm", "sr")]
    state.finish_job(job.id, "done", 5.0, priority="FLAG", results=results, destinations=["a", "b"])
    # The same object again (a rerun after a crash) adds nothing.
    state.finish_job(job.id, "done", 6.0, priority="FLAG", results=results, destinations=["a"])
    with sqlite3.connect(tmp_path / "s.db") as db:
        rows = db.execute("SELECT destination, created_at FROM outbox ORDER BY destination")
        assert rows.fetchall() == [("a", 5.0), ("b", 5.0)]
    assert state.job(job.id).priority == "FLAG"
    with pytest.raises(StateError, match=r"job outcome: expected done, failed or skipped, got 'x'"):
        state.finish_job(job.id, "x", 7.0)
    with pytest.raises(StateError, match=r"no job 99"):
        state.finish_job(99, "done", 7.0)
    with pytest.raises(StateError, match=r"no job 98"):
        state.job(98)


def test_study_reads_one_row_by_its_key(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    for n in range(3):
        state.record_instance(instance(f"1.{n}", f"1.{n}.1", 100 + n), True, "new")
    state.record_instance(instance("1.1", "1.1.2", 104), False, "new")
    summary = state.study("1.1")
    assert summary is not None
    assert (summary.study_uid, summary.instance_count, summary.last_received_at) == ("1.1", 2, 104)
    assert state.study("9.9") is None
    assert summary in state.studies()


class _FailingCommit:
    """A connection whose next COMMIT fails, as a disk error at commit time would."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.fail = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.fail:
            self.fail = False
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction


def test_a_failed_commit_rolls_back_and_the_next_write_works(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    real = state._db
    state._db = _FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(StateError, match="disk I/O error"):
        state.record_instance(instance("1.1", "1.1.1", 100), True, "new")
    assert not real.in_transaction
    assert state.studies() == []  # nothing of the failed transaction is visible
    state.record_instance(instance("1.1", "1.1.1", 101), True, "new")
    assert [s.study_uid for s in state.studies()] == ["1.1"]


def test_a_failing_read_is_a_state_error(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    state._db.execute("DROP TABLE studies")
    with pytest.raises(StateError, match="no such table: studies"):
        state.next_due()
    with pytest.raises(StateError, match="no such table: studies"):
        state.study("1.1")


def test_a_reopened_study_still_counts_the_associations_that_carry_it(tmp_path: Path) -> None:
    # A and B carry the study; it completes (quiet) while both stay open; A reopens it.
    # B ending must not pass for the release of the new episode while A still sends.
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.1", "1.1.1", 100), True, "new")  # A
    state.record_instance(instance("1.1", "1.1.2", 100.5), True, "new")  # B
    assert [j.reason for j in state.complete_due(106)] == ["quiet"]
    state.record_instance(instance("1.1", "1.1.3", 110), False, "new")  # A again: reopened
    state.release({"1.1"}, 111)  # B ends
    summary = state.study("1.1")
    assert summary is not None
    assert (summary.state, summary.open_associations) == ("receiving", 1)
    assert state.complete_due(112) == []  # not "released" after 1 s: A is still open
    assert [j.reason for j in state.complete_due(115)] == ["quiet"]
    # A restart closes every association: a completed study's count starts again at 0.
    state.close()
    state = State(tmp_path / "s.db", RULES)
    state.recover(200)
    summary = state.study("1.1")
    assert summary is not None and summary.open_associations == 0


def test_resending_a_study_whose_job_failed_or_was_skipped_reruns_it(tmp_path: Path) -> None:
    # The runbook's fix for a failed job: resend the study from the PACS once the cause
    # is fixed. Identical instances must then make a new job, not be ignored.
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.1", "1.1.1", 100), True, "new")
    [job] = state.complete_due(200)
    state.finish_job(job.id, "failed", 201, error="engine failed 5 times")
    outcome = state.record_instance(instance("1.1", "1.1.1", 300), True, "duplicate")
    assert (outcome.study_touched, outcome.study_reopened) == (True, True)
    [again] = state.complete_due(400)
    assert (again.generation, again.instance_count) == (2, 1)
    # Skipped (no routing rule selected an image): the admin fixes the config and resends;
    # the resend was ignored as a duplicate, and the study could never be rerun.
    state.finish_job(again.id, "skipped", 401, error="no routing rule selected an image")
    outcome = state.record_instance(instance("1.1", "1.1.1", 450), True, "duplicate")
    assert (outcome.study_touched, outcome.study_reopened) == (True, True)
    [third] = state.complete_due(550)
    assert third.generation == 3
    # A study whose job succeeded is not rerun by a resend.
    state.finish_job(third.id, "done", 551)
    outcome = state.record_instance(instance("1.1", "1.1.1", 600), True, "duplicate")
    assert (outcome.study_touched, outcome.study_reopened) == (False, False)


def test_a_pending_job_of_a_reopened_study_is_superseded(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.9", "1.9.1", 100), True, "new")
    [first] = state.complete_due(200)
    assert state.skip_if_superseded(first, 201) is None  # current: it runs
    state.record_instance(instance("1.9", "1.9.2", 300), True, "new")  # a late instance
    why = state.skip_if_superseded(first, 301)  # the study is being received again
    assert why is not None and why.startswith("superseded: ")
    assert (state.job(first.id).state, state.job(first.id).error) == ("skipped", why)
    [second] = state.complete_due(400)
    assert (second.generation, second.instance_count) == (2, 2)
    assert state.skip_if_superseded(second, 401) is None
    state.close()


def test_a_clock_set_back_does_not_hold_studies_until_it_catches_up(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    # Received while the clock ran two hours fast; then NTP set it back.
    state.record_instance(instance("1.9", "1.9.1", 10_000 + 7_200), True, "new")
    state.release({"1.9"}, 10_000 + 7_200)
    assert state.complete_due(10_000) == []  # re-armed from now: released 1 s from now
    [job] = state.complete_due(10_000 + RULES.after_release_seconds)  # was: two hours later
    assert (job.study_uid, job.reason) == ("1.9", "released")
    [study] = state.studies()
    assert study.first_received_at == study.last_received_at == 10_000
    state.close()


def test_a_receipt_a_moment_ahead_of_the_assembler_is_not_a_clock_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A C-STORE that read the clock just after the assembler, and took the lock first: the
    # warning "the clock is behind ... (it was set back?)" fired under ordinary load.
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.9", "1.9.1", 10_000.003), True, "new")
    with caplog.at_level(logging.WARNING):
        assert state.complete_due(10_000) == []
    assert "clock is behind" not in caplog.text
    [study] = state.studies()
    assert study.first_received_at == 10_000.003  # left as received
    state.close()


def test_recovery_after_a_clock_set_back_counts_from_the_restart(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", RULES)
    state.record_instance(instance("1.9", "1.9.1", 10_000 + 7_200), True, "new")
    state.release({"1.9"}, 10_000 + 7_200)
    state.close()  # the node was killed; it starts again with the clock corrected
    state = State(tmp_path / "s.db", RULES)
    assert state.recover(10_000) == 1
    assert state.next_due() == 10_000 + RULES.after_release_seconds
    state.close()


def test_each_installation_has_its_own_device_uid_kept_with_its_state(tmp_path: Path) -> None:
    # Every node wrote the same Device Observer UID: two sites' reports claimed one device.
    state = State(tmp_path / "a.db", RULES)
    mine = state.device_uid()
    assert mine == state.device_uid() and is_valid_uid(mine)
    state.close()
    state = State(tmp_path / "a.db", RULES)
    assert state.device_uid() == mine  # kept across restarts
    state.close()
    other = State(tmp_path / "b.db", RULES)
    assert other.device_uid() != mine
    other.close()
