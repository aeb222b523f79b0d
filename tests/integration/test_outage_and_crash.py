"""Nothing is lost: results wait out a PACS outage, and survive kill -9 of the node.

The node sends to a real Orthanc on a fixed port; the tests take Orthanc away and bring it
back, and kill the node's process with SIGKILL between inference and sending.
"""

from __future__ import annotations

import io
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_clients import send_files
from helpers import FORCE_FINDINGS, SCREEN_RULE, pipeline_config
from node_process import NodeProcess
from orthanc import Orthanc, free_port, run_orthanc, wait_for

from dicom_node.node import Node
from engines.phantoms.studies import PhantomStudy, write_study

pytestmark = pytest.mark.skipif(
    not Path("/usr/sbin/Orthanc").exists(), reason="Orthanc is not installed (make test does it)"
)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def count(orthanc: Orthanc, study_uid: str, sop_class: str) -> int:
    return sum(
        1
        for tags in orthanc.study_instances(study_uid)
        if str(pydicom.dcmread(io.BytesIO(orthanc.instance_file(tags["ID"]))).SOPClassUID)
        == sop_class
    )


def outbox_rows(database: Path) -> list[tuple[str, int, str | None]]:
    """(state, attempts, last_error) of every outbox row, read as an operator would."""
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT state, attempts, last_error FROM outbox ORDER BY id")
        return [(str(s), int(a), e) for s, a, e in rows.fetchall()]


def test_results_wait_for_a_pacs_outage_and_are_delivered_after_it(
    tmp_path: Path, engine_cache: Path
) -> None:
    pacs_port = free_port()
    cfg = pipeline_config(
        tmp_path / "spool", engine_cache, triage=FORCE_FINDINGS,
        destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                       "port": pacs_port}],
    )  # fmt: skip
    study = write_study(tmp_path / "study", 301, "normal", "normal", size=64)
    node = Node(cfg)
    node.start()
    try:
        assert send_files(node.port, list(study.files)) == [0]
        database = cfg.storage.database
        # The PACS is down: the SR and the overlays wait in the outbox, retried with backoff.

        def three_failures_each() -> list[tuple[str, int, str | None]] | None:
            rows = outbox_rows(database)
            return rows if rows and all(attempts >= 3 for _, attempts, _ in rows) else None

        rows = wait_for(three_failures_each, 60, "three failed attempts per result")
        # Refused, reset or timed out: every error names the destination, none gave up.
        where = f"127.0.0.1:{pacs_port}"
        assert all(state == "pending" and where in (error or "") for state, _, error in rows)
        with run_orthanc(tmp_path / "orthanc", dicom_port=pacs_port) as orthanc:
            uid = study.identity.study_uid
            orthanc.wait_for(
                lambda: count(orthanc, uid, SR_CLASS) == 1, 30, "the SR after the outage"
            )
            wait_for(lambda: all(r[0] == "sent" for r in outbox_rows(database)), 10, "all sent")
            assert count(orthanc, uid, SC_CLASS) == 2
            assert all(attempts >= 4 for _, attempts, _ in outbox_rows(database))
    finally:
        node.stop(drain_seconds=1)


@pytest.fixture
def node_process(tmp_path: Path, engine_cache: Path) -> Iterator[tuple[NodeProcess, int]]:
    pacs_port = free_port()
    config = {
        "node": {"host": "127.0.0.1", "port": free_port(), "drain_seconds": 2},
        "storage": {"spool_dir": str(tmp_path / "spool"), "min_free_bytes": 0},
        "assembly": {"quiet_seconds": 1, "after_release_seconds": 0.2},
        "engines": {"cache_dir": str(engine_cache), "backend": "onnxruntime", "threads": 2},
        "routing": {"rules": [SCREEN_RULE]},
        "triage": FORCE_FINDINGS,
        "sending": {"backoff_seconds": 0.2, "max_backoff_seconds": 0.5},
        "destinations": [
            {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_port}
        ],
        "logging": {"level": "DEBUG"},
        "metrics": {"port": 0},
    }
    node = NodeProcess(tmp_path, config)
    try:
        yield node, pacs_port
    finally:
        node.kill()


def test_kill_9_between_inference_and_sending_still_ends_with_one_sr_per_study(
    node_process: tuple[NodeProcess, int], tmp_path: Path
) -> None:
    node, pacs_port = node_process
    database = tmp_path / "spool" / "state.sqlite3"
    studies: list[PhantomStudy] = [
        write_study(tmp_path / "a", 401, "femoral_neck_fracture", "normal", size=64),
        write_study(tmp_path / "b", 402, "normal", "osteoarthritis", size=64),
    ]
    node.start()
    assert send_files(node.port, list(studies[0].files)) == [0]
    # Results are committed (job done, outbox rows) but the PACS is not there yet: kill -9.
    wait_for(lambda: outbox_rows(database) or None, 60, "the first study's results queued")
    node.kill(signal.SIGKILL)
    # Second study: kill -9 as soon as it is complete, while its job may be mid-inference.
    node.start()
    assert send_files(node.port, list(studies[1].files)) == [0]
    with sqlite3.connect(database) as db:
        wait_for(
            lambda: db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2 or None,
            30, "the second study complete",
        )  # fmt: skip
    node.kill(signal.SIGKILL)
    with run_orthanc(tmp_path / "orthanc", dicom_port=pacs_port) as orthanc:
        node.start()
        for study in studies:
            uid = study.identity.study_uid
            orthanc.wait_for(lambda uid=uid: count(orthanc, uid, SR_CLASS) == 1, 60,
                             f"the SR of study {uid}")  # fmt: skip
        wait_for(lambda: all(r[0] == "sent" for r in outbox_rows(database)) or None, 20,
                 "every result sent")  # fmt: skip
        # A crash after delivery but before it was recorded: the same objects go again.
        node.kill(signal.SIGKILL)
        with sqlite3.connect(database) as db:
            db.execute("UPDATE outbox SET state = 'pending', next_attempt_at = 0")
        node.start()
        wait_for(lambda: all(r[0] == "sent" for r in outbox_rows(database)) or None, 20,
                 "every result sent again")  # fmt: skip
        for study in studies:
            assert count(orthanc, study.identity.study_uid, SR_CLASS) == 1
            assert count(orthanc, study.identity.study_uid, SC_CLASS) == 2
