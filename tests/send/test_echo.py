from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest
from orthanc import free_port
from pynetdicom import AE, evt

from dicom_node.config_results import Destination
from dicom_node.send import echo as echo_module
from dicom_node.send.echo import REPEAT_SECONDS, VERIFICATION, EchoMonitor, echo


def test_echo_reaches_a_verification_scp_and_names_why_another_is_not_reached(
    tmp_path: Path,
) -> None:
    ae = AE("PACS")
    ae.add_supported_context(VERIFICATION)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        up = Destination("pacs", "PACS", "127.0.0.1", int(server.server_address[1]))
        assert echo(up, "TRIAGE", 5) is None
        wrong_ae = Destination("pacs", "OTHER", "127.0.0.1", up.port)
        ae.require_called_aet = True
        # /readyz says why, as the peer did: the admin fixes the AE title.
        assert echo(wrong_ae, "TRIAGE", 5) == (
            "association rejected (rejected permanent, service user: called ae title not "
            "recognised)"
        )
    finally:
        server.shutdown()
    down = Destination("pacs", "PACS", "127.0.0.1", free_port())
    assert echo(down, "TRIAGE", 2) == (
        "association got no answer (connection refused, the peer down or unreachable, or "
        "silent for the timeout; or a TLS-only port, and the node sends plain TCP)"
    )
    (tmp_path / "results").mkdir()
    folder = Destination("files", type="folder", path=tmp_path / "results")
    assert echo(folder, "TRIAGE", 2) is None
    # A share not mounted: its mount point filled up with results on the local disk, and
    # the destination read reachable.
    unmounted = Destination("files", type="folder", path=tmp_path / "mnt" / "share")
    assert echo(unmounted, "TRIAGE", 2) == (
        f"folder {tmp_path / 'mnt' / 'share'} does not exist (a share not mounted?): the node "
        "makes only the study folders in it"
    )
    assert not (tmp_path / "mnt").exists()
    (tmp_path / "file").write_text("")
    a_file = Destination("files", type="folder", path=tmp_path / "file")
    assert "file is not a folder" in (echo(a_file, "TRIAGE", 2) or "")
    if os.geteuid() != 0:  # root writes into read-only folders
        (tmp_path / "results").chmod(0o500)
        try:
            assert "cannot write" in (echo(folder, "TRIAGE", 2) or "")
        finally:
            (tmp_path / "results").chmod(0o700)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [("slow", "no C-ECHO response within 0.5 s"), (0xC001, "C-ECHO answered failure 0xC001"),
     ("abort", "association ended by the peer before the C-ECHO was answered")],
)  # fmt: skip
def test_an_echo_without_success_says_what_came_back(answer: str | int, reason: str) -> None:
    def on_echo(event: evt.Event) -> int:
        if answer == "slow":
            time.sleep(1.5)
            return 0
        if answer == "abort":  # was read as a timeout: an admin looked at firewalls
            event.assoc.abort()
            return 0
        return int(answer)

    ae = AE("PACS")
    ae.add_supported_context(VERIFICATION)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, on_echo)]
    )
    try:
        slow = Destination("pacs", "PACS", "127.0.0.1", int(server.server_address[1]))
        # Was "C-ECHO answered None" for no answer on /readyz and in the log.
        assert echo(slow, "TRIAGE", 0.5) == reason
    finally:
        server.shutdown()


def test_monitor_reports_destinations_without_a_recent_answer(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    ok = Destination("files", type="folder", path=tmp_path / "ok")
    down = Destination("pacs", "PACS", "127.0.0.1", free_port())
    monitor = EchoMonitor([ok, down], "TRIAGE", interval=60, timeout=2)
    assert set(monitor.problems(time.time())) == {"files", "pacs"}  # nothing checked yet
    monitor.check_all()
    assert monitor.problems(time.time()) == {"pacs": echo(down, "TRIAGE", 2)}
    assert set(monitor.problems(time.time() + 1000)) == {"files", "pacs"}  # stale answers


def test_a_destination_that_never_answers_does_not_delay_the_others(tmp_path: Path) -> None:
    # A PACS whose packets a firewall drops costs a whole timeout; checked one after the
    # other, the destinations after it would be checked late (and shown not ready).
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        hanging = Destination("silent", "PACS", "127.0.0.1", silent.getsockname()[1])
        (tmp_path / "ok").mkdir()
        ok = Destination("files", type="folder", path=tmp_path / "ok")
        monitor = EchoMonitor([hanging, ok], "TRIAGE", interval=60, timeout=2)
        started = time.time()
        monitor.check_all()
        took = time.time() - started
    assert 1.5 < took < 3.5  # one timeout, not the sum of the checks
    assert set(monitor.problems(time.time())) == {"silent"}
    assert monitor._last_ok["files"] - started < 1.0  # checked at once, not after "silent"


def test_a_destination_down_is_logged_when_it_goes_down_and_when_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Every round logged a warning naming only the destination's name: 2,880 lines a day.
    (tmp_path / "file").write_text("")
    blocked = Destination("files", type="folder", path=tmp_path / "file" / "below")
    monitor = EchoMonitor([blocked], "TRIAGE", interval=30, timeout=2)
    clock = [1000.0]
    monkeypatch.setattr(echo_module.time, "time", lambda: clock[0])
    with caplog.at_level(logging.INFO, logger="dicom_node.send.echo"):
        for _ in range(3):
            monitor.check_all()
            clock[0] += 30
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert (
            caplog.records[0]
            .getMessage()
            .startswith(f"destination files (folder {blocked.path}) not reachable: folder ")
        )
        clock[0] += REPEAT_SECONDS  # still down a quarter of an hour on: said again
        monitor.check_all()
        assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
        (tmp_path / "file").unlink()
        blocked.path.mkdir(parents=True)  # type: ignore[union-attr]
        monitor.check_all()
        monitor.check_all()
    assert [r.getMessage() for r in caplog.records[2:]] == [
        f"destination files (folder {blocked.path}) reachable again"
    ]
    assert monitor.problems(clock[0]) == {}
