from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from dicom_node.assemble.assembler import Assembler
from dicom_node.config import AssemblyConfig
from dicom_node.models import Header, Job, ReceivedInstance
from dicom_node.state import State

RULES = AssemblyConfig(quiet_seconds=0.2, after_release_seconds=0.1, max_wait_seconds=60)


def _instance(study: str, sop: str, at: float) -> ReceivedInstance:
    header = Header("1.2.840.10008.5.1.4.1.1.1", sop, study, study + ".1", "CR", "", "", True)
    return ReceivedInstance(header, "1.2.840.10008.1.2.1", "PACS", "a#1", f"i/{sop}", 10, at, False)


def test_the_thread_survives_unexpected_errors_and_completes_later_studies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state = State(tmp_path / "s.db", RULES)
    real_next_due = state.next_due
    calls = {"next_due": 0}

    def next_due_failing_once() -> float | None:
        calls["next_due"] += 1
        if calls["next_due"] == 1:
            # Not a StateError: anything a bug or the driver might raise.
            raise sqlite3.InterfaceError("bad parameter")
        return real_next_due()

    monkeypatch.setattr(state, "next_due", next_due_failing_once)
    handed: list[Job] = []
    done = threading.Event()

    def on_job(job: Job) -> None:
        handed.append(job)
        if len(handed) == 1:
            raise RuntimeError("metrics hiccup")
        done.set()

    assembler = Assembler(state, on_job=on_job)
    assembler.start()
    try:
        state.record_instance(_instance("1.1", "1.1.1", time.time()), False, "new")
        assembler.wake()
        state.record_instance(_instance("1.2", "1.2.1", time.time() + 0.3), False, "new")
        assembler.wake()
        assert done.wait(10), "the second study never completed"
    finally:
        assembler.stop()
    assert [job.study_uid for job in handed] == ["1.1", "1.2"]
    assert "assembler: unexpected error; retrying" in caplog.text
    assert "handing job" in caplog.text
    assert {s.state for s in state.studies()} == {"complete"}
