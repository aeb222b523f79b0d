"""The node as a real process: SIGTERM drain, forced stop, kill -9 and restart, CLI output."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import config_for, tiny_image
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node import cli
from dicom_node.config import AssemblyConfig
from dicom_node.errors import SpoolError
from dicom_node.models import Header, ReceivedInstance
from dicom_node.node import Node, _ForcedStopError
from dicom_node.spool import Spool
from dicom_node.state import State

CR = "1.2.840.10008.5.1.4.1.1.1"


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProcess:
    """``python -m dicom_node serve`` with a config in ``folder``; stderr goes to a log file."""

    def __init__(self, folder: Path, drain: float = 10, quiet: float = 1.5) -> None:
        self.folder = folder
        self.port = free_port()
        self.config = folder / "node.yaml"
        self.config.write_text(
            f"node: {{host: 127.0.0.1, port: {self.port}, drain_seconds: {drain}}}\n"
            f"storage: {{spool_dir: spool, min_free_bytes: 0}}\n"
            f"assembly: {{quiet_seconds: {quiet}, after_release_seconds: 0.3, max_wait_seconds: 60}}\n"
            "logging: {level: DEBUG}\n"
            "routing: {rules: [], cascade: []}\n"
            "metrics: {port: 0}\n"
        )
        self.log = folder / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node", "serve", "--config", str(self.config)],
                stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if not accepts_connections(self.port):
                # A refused pynetdicom association leaks its socket; probe with TCP first.
                time.sleep(0.1)
                continue
            ae = AE("PACS")
            ae.add_requested_context("1.2.840.10008.1.1")
            assoc = ae.associate("127.0.0.1", self.port, ae_title="TRIAGE")
            if assoc.is_established:
                assoc.release()
                return
            time.sleep(0.1)
        raise AssertionError("node did not answer C-ECHO within 20 s")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dicom_node", *args, "--config", str(self.config)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return result.stdout

    def state(self) -> State:
        return State(self.folder / "spool" / "state.sqlite3", AssemblyConfig())


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path)
    yield node
    node.kill()


def associate(port: int) -> Association:
    ae = AE("PACS")
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established
    return assoc


def test_sighup_is_logged_and_ignored(node_process: NodeProcess) -> None:
    # The usual "reload certificates" signal ended the node at once (129): no drain, no line.
    node_process.start()
    node_process.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert node_process.proc is not None and node_process.proc.poll() is None
    assert accepts_connections(node_process.port)
    assert "SIGHUP received and ignored" in node_process.log.read_text()
    node_process.signal(signal.SIGTERM)
    assert node_process.wait(10) == 0


def test_sigterm_lets_open_associations_finish_and_refuses_new_ones(
    node_process: NodeProcess,
) -> None:
    node_process.start()
    assoc = associate(node_process.port)
    first, second = tiny_image("1.2.3.10"), tiny_image("1.2.3.10")
    assert assoc.send_c_store(first).Status == 0
    node_process.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert not accepts_connections(node_process.port)  # no longer listening
    assert assoc.send_c_store(second).Status == 0  # the open association may still finish
    assoc.release()
    assert node_process.wait(10) == 0
    for ds in (first, second):
        assert (
            node_process.folder / "spool" / "instances" / "1.2.3.10" / f"{ds.SOPInstanceUID}.dcm"
        ).exists()
    assert "draining" in node_process.log.read_text()


def test_second_signal_forces_the_stop(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, drain=30)
    try:
        node.start()
        assoc = associate(node.port)
        node.signal(signal.SIGTERM)
        time.sleep(0.3)
        started = time.monotonic()
        node.signal(signal.SIGTERM)
        assert node.wait(10) == 0
        assert time.monotonic() - started < 5
        time.sleep(0.2)
        assert not assoc.is_established or assoc.is_aborted
        assert "forcing shutdown" in node.log.read_text()
    finally:
        node.kill()


@pytest.mark.parametrize("release_before_kill", [False, True], ids=["open", "released"])
def test_kill_9_loses_nothing_acknowledged_and_completes_each_study_once(
    node_process: NodeProcess, release_before_kill: bool
) -> None:
    node_process.start()
    assoc = associate(node_process.port)
    sent: dict[str, list[str]] = {}
    for s in range(3):
        study = f"1.2.826.0.1.3680043.8.498.{900 + s}"
        for _ in range(4):
            ds = tiny_image(study)
            assert assoc.send_c_store(ds).Status == 0
            sent.setdefault(study, []).append(ds.SOPInstanceUID)
    if release_before_kill:
        assoc.release()
    node_process.kill()  # SIGKILL right after the acknowledgements
    if not release_before_kill:
        assoc.abort()
    node_process.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = node_process.state()
        try:
            done = [s for s in state.studies() if s.state == "complete"]
        finally:
            state.close()
        if len(done) == 3:
            break
        time.sleep(0.2)
    time.sleep(2)  # past any second completion, were there one
    node_process.signal(signal.SIGTERM)
    assert node_process.wait(15) == 0
    state = node_process.state()
    try:
        studies = {s.study_uid: s for s in state.studies()}
        jobs = state.jobs()
    finally:
        state.close()
    for study, sops in sent.items():
        assert studies[study].state == "complete"
        assert studies[study].completions == 1
        assert studies[study].instance_count == 4
        for sop in sops:
            path = node_process.folder / "spool" / "instances" / study / f"{sop}.dcm"
            assert dcmread(path).SOPInstanceUID == sop
    assert sorted((j.study_uid, j.generation, j.instance_count) for j in jobs) == [
        (study, 1, 4) for study in sorted(sent)
    ]
    assert "re-armed 3 studies" in node_process.log.read_text() or release_before_kill


def test_cli_lists_studies_and_jobs_without_patient_data(node_process: NodeProcess) -> None:
    node_process.start()
    assoc = associate(node_process.port)
    ds = tiny_image("1.2.826.0.1.3680043.8.498.950")
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    time.sleep(1.0)
    studies = node_process.cli("studies")
    jobs = node_process.cli("jobs")
    node_process.signal(signal.SIGTERM)
    assert node_process.wait(10) == 0
    assert "1.2.826.0.1.3680043.8.498.950" in studies
    assert "complete" in studies and "1 studies" in studies
    assert "released" in jobs and "1 jobs" in jobs
    for text in (studies, jobs, node_process.log.read_text()):
        assert "PHANTOM" not in text  # tiny_image's PatientName and PatientID


def test_check_config_exit_codes_and_overrides(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    run = [sys.executable, "-m", "dicom_node"]
    ok = subprocess.run(
        [*run, "check-config", str(root / "config.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  port: 70000\n")
    failed = subprocess.run(
        [*run, "check-config", str(bad)], capture_output=True, text=True, check=False
    )
    assert failed.returncode == 2
    assert "node.port: expected an integer from 0 to 65535, got 70000" in failed.stderr
    env = {**os.environ, "DICOM_NODE_CONFIG": str(bad)}
    from_env = subprocess.run(
        [*run, "check-config"], capture_output=True, text=True, env=env, check=False
    )
    assert from_env.returncode == 2 and "node.port" in from_env.stderr
    fixed = subprocess.run(
        [*run, "check-config", "--port", "104"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert fixed.returncode == 0, fixed.stderr
    studies = subprocess.run(
        [*run, "studies", "--spool-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert studies.returncode == 0 and "the node has not run yet" in studies.stdout


def _serve_failing_to_start(
    tmp_path: Path, node: tuple[str, int], metrics: tuple[str, int]
) -> subprocess.CompletedProcess[str]:
    """``dicom-node serve`` on these (host, port) addresses, expected to fail at start."""
    config = tmp_path / "node.yaml"
    config.write_text(
        f"node: {{host: {node[0]}, port: {node[1]}}}\n"
        f"metrics: {{host: {metrics[0]}, port: {metrics[1]}}}\n"
        "storage: {spool_dir: spool, min_free_bytes: 0}\n"
        "routing: {rules: [], cascade: []}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize("taken", ["node", "metrics"])
def test_serve_on_a_port_in_use_is_a_one_line_error(tmp_path: Path, taken: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        ports = {"node": free_port(), "metrics": 0, taken: port}
        result = _serve_failing_to_start(
            tmp_path, ("127.0.0.1", ports["node"]), ("127.0.0.1", ports["metrics"])
        )
    assert f"dicom-node: error: {taken}.port: cannot listen on 127.0.0.1:{port} (" in result.stderr


@pytest.mark.parametrize("unresolvable", ["node", "metrics"])
def test_serve_on_a_host_that_does_not_resolve_names_the_key(
    tmp_path: Path, unresolvable: str
) -> None:
    hosts = {"node": "127.0.0.1", "metrics": "127.0.0.1", unresolvable: "no-such-host.invalid"}
    result = _serve_failing_to_start(tmp_path, (hosts["node"], free_port()), (hosts["metrics"], 0))
    assert (
        f"dicom-node: error: {unresolvable}.host: cannot resolve 'no-such-host.invalid' ("
        in result.stderr
    )


def test_relative_spool_dir_flag_means_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "work").mkdir()
    config = tmp_path / "etc" / "node.yaml"
    config.write_text("storage: {spool_dir: spool}\n")
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "studies", "--config", str(config), "--spool-dir", "myspool"],
        capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path / "work",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"no state database at {tmp_path / 'work' / 'myspool'}" in result.stdout


def test_a_second_signal_exits_at_once_with_a_c_echo_to_a_silent_pacs(tmp_path: Path) -> None:
    # pynetdicom's association threads are not daemons: the one waiting on the silent PACS
    # kept the process alive for sending.timeout_seconds after the node had stopped.
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        node = NodeProcess(tmp_path)
        config = node.config.read_text().replace(
            "metrics: {port: 0}\n", "metrics: {port: 0, echo_interval_seconds: 60}\n"
        )
        node.config.write_text(
            config + "sending: {timeout_seconds: 30}\n"
            f"destinations: [{{name: pacs, ae_title: PACS, host: 127.0.0.1, "
            f"port: {silent.getsockname()[1]}}}]\n"
        )
        try:
            node.start()
            time.sleep(0.5)  # the first C-ECHO is under way, to a peer that never answers
            node.signal(signal.SIGTERM)
            time.sleep(0.3)
            started = time.monotonic()
            node.signal(signal.SIGTERM)
            assert node.wait(20) == 0
            assert time.monotonic() - started < 5  # was ~30 s: the C-ECHO's timeout
            log = node.log.read_text()
            assert "exiting without 1 thread(s) still in a network call" in log
        finally:
            node.kill()


def test_a_forced_stop_does_not_wait_for_a_hanging_destination(
    start_node: Callable[..., Node],
) -> None:
    # The echo monitor is inside a C-ECHO to a PACS that accepts and never answers: a
    # graceful stop waits for it (up to its timeout), a forced one (second signal) does not.
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        port = silent.getsockname()[1]
        node = start_node(
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}],
            sending={"timeout_seconds": 30},
            metrics={"port": 0, "echo_interval_seconds": 60},
        )
        time.sleep(0.5)  # the first C-ECHO is under way
        node._signals = 2  # as after a second SIGTERM
        started = time.monotonic()
        node.stop(drain_seconds=0)
        assert time.monotonic() - started < 3.0


def test_an_unstarted_or_stopped_node_has_no_ports(tmp_path: Path) -> None:
    def no_ports(node: Node) -> None:
        with pytest.raises(RuntimeError, match=r"^node is not started$"):
            _ = node.port
        with pytest.raises(RuntimeError, match=r"^node is not started$"):
            _ = node.http_port

    node = Node(config_for(tmp_path / "spool"))
    no_ports(node)
    node.start()
    try:
        assert node.port > 0 and node.http_port > 0
    finally:
        node.stop(drain_seconds=0)
    no_ports(node)


def test_a_spool_below_its_free_space_guard_is_not_ready(tmp_path: Path) -> None:
    # Every C-STORE is refused (0xA700) below storage.min_free_bytes: /readyz must say so.
    node = Node(config_for(tmp_path / "spool", storage__min_free_bytes=2**62))
    node.start()
    try:
        assert node.not_ready()["spool"].endswith(
            f"bytes free, below storage.min_free_bytes ({2**62}): refusing instances"
        )
    finally:
        node.stop(drain_seconds=0)
    node = Node(config_for(tmp_path / "spool"))  # min_free_bytes 0
    node.start()
    try:
        assert "spool" not in node.not_ready()
    finally:
        node.stop(drain_seconds=0)


def test_assembly_wait_is_not_measured_from_a_later_episode(tmp_path: Path) -> None:
    node = Node(config_for(tmp_path / "spool"))
    node.start()
    try:
        assert node.state is not None and node.pipeline is not None
        assert node.assembler is not None
        node.assembler.stop()  # the test completes the study itself
        study = "1.2.826.0.1.3680043.8.498.77"

        def receive(sop: str, at: float) -> None:
            header = Header(CR, sop, study, study + ".1", "CR", "", "", True)
            instance = ReceivedInstance(header, ExplicitVRLittleEndian, "PACS", "a", sop, 1, at,
                                        False)  # fmt: skip
            node.state.record_instance(instance, True, "new")  # type: ignore[union-attr]

        receive(study + ".1", 100.0)
        node.state.release({study}, 100.0)
        [job] = node.state.complete_due(110.0)
        receive(study + ".2", 200.0)  # reopened before the job was reported: a new episode

        def waits() -> float:
            value = node.metrics.registry.get_sample_value("dicom_node_assembly_wait_seconds_count")
            return value or 0.0

        before = waits()
        node._job_created(job, node.pipeline)
        assert waits() == before  # its first instance is the new episode's: not measured
        node._job_created(replace(job, created_at=250.0), node.pipeline)
        assert waits() == before + 1
    finally:
        node.stop(drain_seconds=0)


class _BusyWorker:
    """A worker whose thread is still in a round (a job inside an engine, a C-STORE)."""

    alive = True

    def request_stop(self) -> None:
        pass

    def stop(self, timeout: float = 0.0) -> None:
        pass


def test_a_forced_stop_names_what_it_left_running(
    start_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    assert node.pipeline is not None and node.sender is not None
    node.pipeline.stop()
    node.pipeline = _BusyWorker()  # type: ignore[assignment]
    node._signals = 2  # as after a second SIGTERM
    node.stop(drain_seconds=0)
    # The CLI then exits without tearing the interpreter down under the job's thread: in
    # onnxruntime that aborted the process (exit 134).
    assert "pipeline" in node.left_running


def test_a_start_cut_short_by_a_second_signal_binds_no_port(tmp_path: Path) -> None:
    node = Node(config_for(tmp_path / "spool"))
    node._signals = 2  # both signals came during the start
    with pytest.raises(_ForcedStopError):
        node.start()  # was: every engine loaded and the DICOM port bound first
    try:
        assert node._server is None and node.engines is None
    finally:
        node.stop(drain_seconds=0)


def test_the_cli_exits_at_once_when_the_stop_left_a_worker_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits: list[int] = []

    def exit_now(code: int) -> None:
        exits.append(code)

    monkeypatch.setattr(os, "_exit", exit_now)
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    cli._exit_without_lingering_threads(0)
    assert exits == []  # nothing left: the normal exit
    cli._exit_without_lingering_threads(0, ["pipeline"])
    assert exits == [0]


def test_the_start_line_writes_an_ipv6_address_in_brackets(
    start_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    # Was "metrics on http://::1:9100", which no browser or curl parses.
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this host")
    with caplog.at_level(logging.INFO, logger="dicom_node.node"):
        node = start_node(node__host="::1", metrics__host="::1", metrics__port=0)
    assert f"on [::1]:{node.port};" in caplog.text
    assert f"metrics on http://[::1]:{node.http_port}" in caplog.text


def test_a_second_node_on_the_same_spool_is_refused(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    # Both started: the second emptied the first's tmp/ under its writes, re-armed its
    # studies and ran their jobs again.
    first = start_node()
    partial = tmp_path / "spool" / "tmp" / "in-flight.part"
    partial.write_bytes(b"a write in progress")
    second = Node(config_for(tmp_path / "spool"))
    with pytest.raises(
        SpoolError,
        match=rf"^storage\.spool_dir: .*spool is in use by another dicom-node \(process "
        rf"{os.getpid()}\); two nodes must never share a spool$",
    ):
        second.start()
    assert partial.exists()  # left alone
    assert second.http is None and second.state is None
    first.stop(drain_seconds=0)
    third = start_node()  # the first's stop released it
    assert third.state is not None


def test_a_failed_start_stops_its_workers_before_it_frees_the_spool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The DICOM port taken: the lock was freed while the pipeline (a recovered job), the
    # sender and the assembler still ran, and a second node could take the spool.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        node = Node(config_for(tmp_path / "spool", node__port=taken.getsockname()[1]))
        seen: list[bool] = []
        stop = node.stop

        def stop_and_look(drain_seconds: float | None = None) -> None:
            stop(drain_seconds)
            seen.append(Spool.in_use(tmp_path / "spool") is None)

        node.stop = stop_and_look  # type: ignore[method-assign]
        with (
            caplog.at_level(logging.INFO, logger="dicom_node.node"),
            pytest.raises(OSError, match=r"Address already in use"),
        ):
            node.start()
        assert node.binding == "dicom"  # what the CLI's one line names, after the stop
        stop(0)  # the caller's own stop (the CLI's): nothing left to do, nothing logged
    assert seen and seen[0]  # the stop ran, and freed the spool at its end
    assert node.pipeline is None and node.sender is None and node.assembler is None
    assert Spool.in_use(tmp_path / "spool") is None
    assert caplog.text.count("dicom-node stopped") == 1
