from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dicom_node.config import AssemblyConfig
from dicom_node.errors import StateError
from dicom_node.models import Header, ReceivedInstance
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
    assert state.existing_path("1.9.1") == "i/1.9.1"


def test_schema_version_mismatch_is_refused(tmp_path: Path) -> None:
    State(tmp_path / "s.db", RULES).close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateError, match=r"schema version 99, this node needs 1"):
        State(tmp_path / "s.db", RULES)


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "s.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=r"cannot open the node's state database"):
        State(tmp_path / "s.db", RULES)
