"""The node's lifecycle: start-up, serving, graceful drain and shutdown.

``Node(config)`` owns every long-lived part. ``start()`` opens the spool and
state, re-arms the study timers that survived a restart, opens the engines the
routing needs (a missing engine stops the start with a clear error), starts the
sender, the pipeline, the assembler, the purger (``storage.retention_hours``) and
then the Storage SCP. ``stop()`` first stops accepting associations, waits up to
``node.drain_seconds`` for open ones to finish, aborts what is left (an aborted
instance was never acknowledged, so the sender keeps it), then stops the purger,
the assembler, the pipeline (a job in hand stays pending for the next start) and
the sender, and closes the state.
``serve()`` runs until SIGTERM/SIGINT; a second signal forces.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Protocol

from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import __version__
from dicom_node.address import host_port
from dicom_node.assemble.assembler import Assembler
from dicom_node.config import Config
from dicom_node.errors import SpoolError
from dicom_node.http import HttpEndpoints
from dicom_node.infer import EngineSet
from dicom_node.metrics import Metrics
from dicom_node.models import Job
from dicom_node.pipeline import Pipeline, engines_needed
from dicom_node.receive import Receiver, build_ae, event_handlers
from dicom_node.receive.server import start_server
from dicom_node.receive.tls import server_context
from dicom_node.retention import Purger
from dicom_node.send import Outbox, Sender
from dicom_node.send.echo import EchoMonitor
from dicom_node.spool import Spool
from dicom_node.state import State
from dicom_node.triage import check_cascade, check_overrides

log = logging.getLogger(__name__)

# A stop, after node.drain_seconds of draining: aborted associations get ABORT_SECONDS to
# end, then the job in hand JOB_STOP_SECONDS to finish (the other threads' waits overlap
# it). A service manager must wait for all of it (deploy/ allows drain_seconds + 45 s): a
# job killed mid-run counts as a crash, and a study's second crash fails it.
ABORT_SECONDS = 2.0
JOB_STOP_SECONDS = 30.0
_AWAIT_SLICE = 0.05  # how soon a wait for a thread sees a second signal


class _Stoppable(Protocol):
    @property
    def alive(self) -> bool: ...


class _ForcedStopError(Exception):
    """A second signal during start-up: the start ends at its next step."""


class Node:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.http: HttpEndpoints | None = None
        self.echo: EchoMonitor | None = None
        self._server: ThreadedAssociationServer | None = None
        self._stopped = threading.Event()
        # What a failing start was binding ("metrics", "dicom"), for the CLI's one line: the
        # stop that follows the failure clears the fields that said it.
        self.binding: str | None = None
        self._signals = 0
        self.spool: Spool | None = None
        self.state: State | None = None
        self.assembler: Assembler | None = None
        self.engines: EngineSet | None = None
        self.pipeline: Pipeline | None = None
        self.sender: Sender | None = None
        self.outbox: Outbox | None = None
        self.purger: Purger | None = None
        # Threads still inside a job, a send or an echo when the stop gave up on them: the
        # process must then exit without tearing the interpreter down under them (a job in
        # onnxruntime aborted the process, exit 134).
        self.left_running: list[str] = []

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``node.port: 0``)."""
        if self._server is None:
            raise RuntimeError("node is not started")
        return int(self._server.server_address[1])

    @property
    def http_port(self) -> int:
        """The port of /metrics, /healthz and /readyz (useful with ``metrics.port: 0``)."""
        if self.http is None:
            raise RuntimeError("node is not started")
        return self.http.port

    def start(self) -> None:
        cfg = self.config
        ssl_context = server_context(cfg.node.tls) if cfg.node.tls.enabled else None
        self.spool = Spool(cfg.storage.spool_dir, cfg.storage.min_free_bytes, exclusive=True)
        try:
            self._start(cfg, ssl_context, self.spool)
        except BaseException:
            # The lock goes last: a worker already started (a recovered job in the pipeline)
            # must be stopped before another node may take the spool.
            if self.state is None:
                self.spool.close()
            else:
                self.stop(drain_seconds=0)
            raise

    def _start(self, cfg: Config, ssl_context: ssl.SSLContext | None, spool: Spool) -> None:
        self.state = State(cfg.storage.database, cfg.assembly)
        self.metrics.up_since.set(time.time())
        self.metrics.watch_spool(cfg.storage.spool_dir)
        state = self.state
        self.metrics.watch_state(state.counts)
        self.binding = "metrics"
        self.http = HttpEndpoints(
            cfg.metrics.host, cfg.metrics.port, self.metrics.registry, self.not_ready
        )
        self.binding = None
        self.http.start()
        rearmed = self.state.recover(time.time())
        if rearmed:
            log.info("re-armed %d studies that were still receiving", rearmed)
        self._unless_forced()
        try:
            pipeline = self._start_results(cfg, self.state, spool)
        except BaseException:
            self.stop(drain_seconds=0)
            raise
        self._unless_forced()
        # The receiver first: the assembler asks it which studies are arriving. It stores
        # nothing before the DICOM port is bound, below, after the assembler starts.
        receiver = Receiver(
            spool,
            self.state,
            cfg.node.max_instance_bytes,
            on_change=self._wake_assembler,
            metrics=self.metrics,
        )
        self.assembler = Assembler(
            self.state,
            on_job=lambda job: self._job_created(job, pipeline),
            receiving=receiver.receiving_studies,
        )
        self.assembler.start()
        if cfg.storage.retention_hours is not None:
            self.purger = Purger(
                self.state, spool, cfg.storage.retention_hours, metrics=self.metrics
            )
            self.purger.start()
        ae = build_ae(cfg.node)
        self.binding = "dicom"
        self._server = start_server(
            ae,
            (cfg.node.host, cfg.node.port),
            event_handlers(receiver),
            ssl_context,
            cfg.node.max_instance_bytes,
            on_data=receiver.data_arriving,
            on_tls_refused=receiver.tls_refused,
        )
        self.binding = None
        log.info(
            "dicom-node %s listening as %s on %s%s; spool %s; metrics on http://%s",
            __version__, cfg.node.ae_title, host_port(cfg.node.host, self.port),
            " (TLS)" if ssl_context else "", cfg.storage.spool_dir,
            host_port(cfg.metrics.host, self.http_port),
        )  # fmt: skip

    def _wake_assembler(self) -> None:
        if self.assembler is not None:
            self.assembler.wake()

    def _unless_forced(self) -> None:
        """Between start-up steps: a second signal ends the start here (it said "at once";
        the start loaded every engine and bound the DICOM port first)."""
        if self._signals > 1:
            raise _ForcedStopError

    def _job_created(self, job: Job, pipeline: Pipeline) -> None:
        state = self.state
        study = None if state is None else state.study(job.study_uid)
        # A late instance may have reopened the study since: its first instance is then the
        # new episode's, and this job's wait is not known any more.
        if study is not None and study.first_received_at <= job.created_at:
            self.metrics.assembly_wait_seconds.observe(job.created_at - study.first_received_at)
        pipeline.wake()

    def not_ready(self) -> dict[str, str]:
        """What keeps the node from being ready (empty when ready): for /readyz."""
        problems: dict[str, str] = {}
        if self._server is None:
            problems["dicom"] = "not accepting associations"
        if self.engines is None or (not self.engines.names and engines_needed(self.config)):
            problems["engines"] = "not loaded"
        spool = self.spool
        if spool is None:
            problems["spool"] = "not open"
        else:
            try:
                # A unique name: /readyz and the metrics scrape may probe at the same time.
                fd, name = tempfile.mkstemp(dir=spool.tmp, suffix=".ready-probe")
                os.close(fd)
                Path(name).unlink()
            except OSError as exc:
                problems["spool"] = f"not writable: {exc.strerror or exc}"
            else:
                try:  # below the guard every C-STORE is refused (0xA700): not ready either
                    free = spool.free_bytes()
                    if free < spool.min_free_bytes:
                        problems["spool"] = (
                            f"{free} bytes free, below storage.min_free_bytes "
                            f"({spool.min_free_bytes}): refusing instances"
                        )
                except SpoolError as exc:
                    problems["spool"] = str(exc)
        if self.echo is not None:
            for name, why in self.echo.problems(time.time()).items():
                problems[f"destination:{name}"] = why
        return problems

    def _start_results(self, cfg: Config, state: State, spool: Spool) -> Pipeline:
        """Engines, outbox, sender and pipeline: everything after a study is complete."""
        self.engines = EngineSet(cfg.engines, engines_needed(cfg))
        for name in self.engines.names:
            check_overrides(cfg.triage, self.engines.manifest(name))
            check_cascade(cfg.routing, self.engines.manifest(name))
            manifest = self.engines.manifest(name)
            self.metrics.engine_info.labels(name, manifest.version, self.engines.backend(name)).set(
                1
            )
        self.outbox = Outbox(state, cfg.sending)
        self.sender = Sender(
            self.outbox, cfg.destinations, spool.root, cfg.node.ae_title, metrics=self.metrics
        )
        self.sender.start()
        self.echo = EchoMonitor(
            cfg.destinations, cfg.node.ae_title, cfg.metrics.echo_interval_seconds,
            cfg.sending.timeout_seconds,
        )  # fmt: skip
        self.echo.start()
        echo = self.echo
        self.metrics.watch_readiness(self.not_ready, echo.up)
        self.pipeline = Pipeline(
            cfg, state, spool, self.engines, self.sender.wake, metrics=self.metrics
        )
        self.pipeline.start()
        return self.pipeline

    def stop(self, drain_seconds: float | None = None) -> None:
        """Stop accepting, drain open associations within the timeout, then close; once (a
        failed start stops the node itself, and its caller's stop then has nothing to do)."""
        if self._stopped.is_set():
            return
        drain = self.config.node.drain_seconds if drain_seconds is None else drain_seconds
        server = self._server
        if server is not None:
            self._server = None
            server.shutdown()  # stops accepting and closes the listening socket
            deadline = time.monotonic() + drain
            # Only established associations may be carrying instances; a connection that
            # never sent an A-ASSOCIATE-RQ (a TCP health probe) is aborted at once.
            while any(a.is_established for a in server.active_associations):
                if self._signals > 1 or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            # A thread whose association has just been released is ending by itself.
            left = [a for a in server.active_associations if a.is_established]
            if left:
                log.warning("aborting %d associations still open after draining", len(left))
                for assoc in left:
                    assoc.abort()
                give_up = time.monotonic() + ABORT_SECONDS
                for assoc in left:
                    assoc.join(timeout=max(give_up - time.monotonic(), 0.0))
        # Every background thread is told first, so their waits overlap (the longest one
        # bounds the stop, not their sum); a second signal ends the wait in hand and skips
        # the rest, also one that began before it (a job still running).
        for worker in (self.purger, self.pipeline, self.echo):
            if worker is not None:
                worker.request_stop()
        if self.sender is not None:
            for lane in self.sender.lanes:
                lane.request_stop()
        if self.purger is not None:
            self._await(self.purger, 10.0)
            self.purger.stop(0.0)
            self.purger = None
        if self.assembler is not None:
            self.assembler.stop(0.0)
            self._await(self.assembler, 5.0)
            self.assembler = None
        if self.pipeline is not None:
            self._await(self.pipeline, JOB_STOP_SECONDS)
            if self.pipeline.alive:  # it logs the job it leaves pending
                self.left_running.append("pipeline")
            self.pipeline.stop(0.0)  # a job still in hand stays pending, not counted a crash
            self.pipeline = None
        if self.sender is not None:
            self._await(self.sender, 10.0)
            if self.sender.alive:
                for item in self.sender.unanswered():
                    log.warning(
                        "%s of study %s to %s: no answer before the stop; sent again at the "
                        "next start (the same SOP Instance UID: the PACS keeps one)",
                        item.sop_instance_uid, item.study_uid, item.destination,
                    )  # fmt: skip
                self.left_running.append("sender")
            self.sender.stop(0.0)
            self.sender = None
        if self.echo is not None:
            self._await(self.echo, self.echo.timeout + 5.0)
            if self.echo.alive:
                self.left_running.append("echo")
            self.echo.stop(0.0)
            self.echo = None
        if self.engines is not None:
            self.engines.close()
            self.engines = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.state is not None:
            self.state.close()
            self.state = None
        if self.spool is not None:
            self.spool.close()  # another node may serve it now
        self._stopped.set()
        log.info("dicom-node stopped")

    def _await(self, worker: _Stoppable, seconds: float) -> None:
        """Wait up to ``seconds`` for a worker's thread to finish. A second signal
        ends the wait, also one already under way: a join's timeout, taken when it began,
        held a forced stop for the rest of a running job's 30 s. The threads are daemons;
        the process exits without them."""
        deadline = time.monotonic() + seconds
        while worker.alive and self._signals < 2 and time.monotonic() < deadline:
            time.sleep(_AWAIT_SLICE)

    def serve(self) -> int:
        """Run until a signal; the first drains gracefully, a second forces."""
        stop_requested = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals == 1:
                log.info("%s received: draining (a second signal forces)",
                         signal.Signals(signum).name)  # fmt: skip
                stop_requested.set()
            else:
                log.warning("%s received again: forcing shutdown", signal.Signals(signum).name)

        def on_hangup(signum: int, frame: FrameType | None) -> None:
            # The usual "reload" signal killed the node at once (status 129): no drain, no
            # log line, open associations cut, and systemd's Restart=on-failure left it down.
            log.warning(
                "SIGHUP received and ignored: the configuration, TLS certificates and "
                "engines are read at start only; restart the node to load new ones"
            )

        # Handlers first: a signal during start-up still drains instead of killing.
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
        try:
            try:
                self.start()
            except _ForcedStopError:
                log.warning("start-up cut short by the second signal")
            while not stop_requested.wait(0.5):
                pass
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0
