"""The pipeline worker: each pending job (a completed study) to results queued for sending.

::

    job -> read_sources -> analyse_study -> build_results -> spool/outputs -> finish_job
        (headers)          (route, preprocess,  (SR + SCs,      (durable)      (job outcome and
                            infer, triage)       pure builders)                 outbox rows, atomic)

A job stays pending until its outcome and its outbox rows are committed
together, so a crash at any point reruns it after a restart, and the rerun
writes the same objects (deterministic UIDs). Bad data fails the job with the
reason logged and recorded; an engine that cannot run right now (a Triton
server away) leaves it pending and it is retried.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from dicom_node.analyse import MixedPatientsError, StudyAnalysis, analyse_study, read_sources
from dicom_node.config import Config
from dicom_node.errors import (
    UNREADABLE_DICOM,
    DicomNodeError,
    ReportError,
    SpoolError,
    SpoolFullError,
    StateError,
    describe,
)
from dicom_node.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.infer import EngineOutputError, EngineSet, EngineUnavailableError
from dicom_node.metrics import Metrics
from dicom_node.models import Job, ResultObject
from dicom_node.preprocess import PreprocessError
from dicom_node.report.sr import reported_findings
from dicom_node.results import build_results, summary
from dicom_node.route.plan import why_none
from dicom_node.spool import Spool
from dicom_node.state import State
from dicom_node.worker import Worker
from engines.runtimes import EngineRuntimeError

log = logging.getLogger(__name__)

# What an earlier report's header needs to be superseded (report.sr.supersede).
_REPORT_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                "InstanceNumber", "PredecessorDocumentsSequence",
                "SourceImageSequence"]  # fmt: skip

_IDLE_POLL = 1.0
_RETRY_SECONDS = 10.0  # after an engine could not run
_SPOOL_FULL_RETRY_SECONDS = 60.0  # after the results could not be written for want of space
STATE_RETRY_SECONDS = 10.0  # after the state database could not be written
_MAX_INTERRUPTED = 2  # starts of a job cut short by a stop or a crash before it fails
_MAX_ENGINE_RETRIES = 5


def engines_needed(cfg: Config) -> tuple[str, ...]:
    """The engines the routing rules and cascade can call, in first-use order."""
    names = [r.engine for r in cfg.routing.rules]
    names += [name for c in cfg.routing.cascade for name in (c.after, c.engine)]
    return tuple(dict.fromkeys(names))


def encode(ds: Dataset) -> bytes:
    """A result object as its file: its File Meta names the node (the conformance
    statement's Implementation Class UID and Version Name), not highdicom, which wrote it."""
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


class Pipeline(Worker):
    def __init__(
        self,
        cfg: Config,
        state: State,
        spool: Spool,
        engines: EngineSet,
        on_results: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__("pipeline")
        self.metrics = metrics if metrics is not None else Metrics()
        self.cfg = cfg
        self.state = state
        self.spool = spool
        self.engines = engines
        self.on_results = on_results
        self._engine_failures: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}  # time.monotonic(): a wall-clock step can't hold it
        self._in_hand: int | None = None  # the job being processed, by id
        self.device_uid = state.device_uid()  # this installation, as the SRs' observer

    def start(self) -> None:
        if not self.cfg.destinations:
            log.warning("no destinations configured: results stay in %s/outputs", self.spool.root)
        super().start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the job in hand (an unfinished job stays pending for the next start).

        A job still running after ``timeout`` is cut short by the process's exit. That was
        asked for, not a crash: the start is not counted towards failing the job.
        """
        super().stop(timeout)
        in_hand = self._in_hand
        if in_hand is not None:
            log.warning("stopping in the middle of job %d; it runs again at the next start",
                        in_hand)  # fmt: skip
            self.state.job_ran_out(in_hand)

    def round(self) -> float:
        self.run_pending()
        return _IDLE_POLL

    def run_pending(self) -> int:
        """Process every pending job that is not waiting for a retry; returns how many."""
        count = 0
        for job in self.state.jobs("pending"):
            if self.stopping:
                break
            if self._retry_at.get(job.id, -math.inf) > time.monotonic():
                continue
            self.process(job)
            count += 1
        return count

    def process(self, job: Job) -> None:
        self._in_hand = job.id
        try:
            self._process_in_hand(job)
        finally:
            self._in_hand = None

    def _process_in_hand(self, job: Job) -> None:
        superseded = self.state.skip_if_superseded(job, time.time())
        if superseded is not None:
            self.metrics.jobs.labels("skipped").inc()
            log.info("study %s: job %d %s", job.study_uid, job.id, superseded)
            return
        if job.runs >= _MAX_INTERRUPTED:
            # Each earlier start ended with the node stopped or crashed mid-job (a job that
            # runs the node out of memory would otherwise take it down at every start).
            why = (
                f"interrupted {job.runs} times (the node stopped or crashed while analysing "
                "this study); resend the study to retry"
            )
            self._fail(job, "other", why)
            return
        started = time.time()
        self.state.start_job(job.id, started)
        try:
            self._process(job, started)
        except StateError as exc:
            self._state_unwritable(job, exc)
        except Exception as exc:  # a bug must fail one study, not stop (or spin) the worker
            log.exception("study %s: internal error", job.study_uid)
            self._fail(job, "other", f"internal error: {describe(exc)}")

    def _stage(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.metrics.stage_seconds.labels(name).observe(now - since)
        return now

    def _process(self, job: Job, started: float) -> None:
        study = job.study_uid
        clock = time.perf_counter()
        try:
            sources = [(self.spool.path(p), ae) for p, ae in self.state.study_sources(study)]
            unreadable: dict[str, str] = {}  # left out, named in the report (PARTIAL)
            images = read_sources(sources, unreadable)
            clock = self._stage("read", clock)
            # The last try before an engine that cannot run fails the job: the hips of the
            # engines that can are reported (PARTIAL) rather than lost with it.
            final = self._engine_failures.get(job.id, 0) + 1 >= _MAX_ENGINE_RETRIES
            analysis = analyse_study(
                study, images, self.engines, self.cfg, final_attempt=final, unreadable=unreadable
            )
            clock = self._stage("analyse", clock)
            if not analysis.hips:
                reason = why_none(images, self.cfg.routing, self.engines.reads_text)
                self.state.finish_job(job.id, "skipped", time.time(), error=reason)
                self.metrics.jobs.labels("skipped").inc()
                log.info("study %s: %s (%d instances)", study, reason, len(images))
                return
            results = build_results(
                analysis, self.engines, self.cfg, self._previous_results(study), self.device_uid
            )
            clock = self._stage("report", clock)
            kinds = [(results.sr, "sr")] + [(ds, "sc") for ds in results.overlays]
            objects = [self._write(study, ds, kind) for ds, kind in kinds]
        except (EngineRuntimeError, EngineUnavailableError) as exc:
            # Also an engine closed under a running job (a stop): retried, not failed.
            self._engine_unavailable(job, exc)
            return
        except PreprocessError as exc:
            self._fail(job, "pixel_data", str(exc))
            return
        except MixedPatientsError as exc:
            self._fail(job, "patients", str(exc))
            return
        except EngineOutputError as exc:
            self._fail(job, "engine", str(exc))
            return
        except ReportError as exc:
            self._fail(job, "report", str(exc))
            return
        except SpoolFullError as exc:
            # Passing (the retention, or an admin, frees space): the results wait, not fail.
            self._retry_later(job, _SPOOL_FULL_RETRY_SECONDS)
            log.warning("study %s: %s; retrying in %.0f s", study, exc, _SPOOL_FULL_RETRY_SECONDS)
            return
        except SpoolError as exc:
            self._fail(job, "spool", str(exc))
            return
        except StateError:
            raise  # passing: the job waits (_state_unwritable), it does not fail
        except DicomNodeError as exc:
            self._fail(job, "other", str(exc))
            return
        self.state.finish_job(
            job.id, "done", time.time(),
            priority=analysis.priority,
            summary=summary(analysis),
            results=objects,
            destinations=[d.name for d in self.cfg.destinations],
        )  # fmt: skip
        self._engine_failures.pop(job.id, None)
        self._retry_at.pop(job.id, None)
        # The job is done and its results are queued: nothing after this may fail it.
        try:
            self._stage("write", clock)
            self._record(analysis)
            log.info(
                "study %s: priority %s, %d hips, SR and %d overlays in %.2f s (inference %.2f s)",
                study, analysis.priority, len(analysis.hips), len(objects) - 1,
                time.time() - started, analysis.inference_seconds,
            )  # fmt: skip
            if self.on_results is not None:
                self.on_results()
        except Exception:  # after the commit: logged, never a failed job
            log.exception("study %s: done; recording its metrics or waking the sender failed",
                          study)  # fmt: skip

    def _record(self, analysis: StudyAnalysis) -> None:
        m = self.metrics
        # The study's own counts first: the alerts on studies and their priority rely on them.
        m.jobs.labels("done").inc()
        m.study_priority.labels(analysis.priority).inc()
        for reason in analysis.partial_reasons:
            m.partial_reports.labels(reason).inc()
        for engine, seconds in analysis.inference:
            m.inference_seconds.labels(engine, self.engines.backend(engine)).observe(seconds)
        for hip in analysis.hips:
            decision = hip.decision
            finding = reported_findings(decision)[0].name
            m.triage.labels(decision.prediction.task.engine, finding, decision.priority).inc()

    def _fail(self, job: Job, reason: str, error: str) -> None:
        self.state.finish_job(job.id, "failed", time.time(), error=error)
        self.metrics.jobs.labels("failed").inc()
        self.metrics.job_failures.labels(reason).inc()
        self._engine_failures.pop(job.id, None)
        self._retry_at.pop(job.id, None)
        log.error("study %s failed (%s): %s", job.study_uid, reason, error)

    def _previous_results(self, study: str) -> list[Dataset]:
        """The headers of the SRs and overlays earlier jobs of this study wrote (in its
        outputs folder until the study is purged: a study received again after that is a
        new episode).

        SRs, with destinations, only those an earlier job queued: a job cut short between
        writing its SR and recording its outcome (a crash), then superseded, left an SR
        that no PACS ever got, and the next report named it as the one it replaces.
        Overlays all: their numbers are only ever taken after them (one whose row an
        admin discarded, delivered by hand, was left out, and the next took its number)."""
        folder = self.spool.path(f"outputs/{study}")
        queued = self.state.queued_results(study) if self.cfg.destinations else None
        previous: list[Dataset] = []
        for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else ():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_REPORT_TAGS)
            except UNREADABLE_DICOM as exc:  # one unreadable file must not fail the study
                log.warning("study %s: earlier result %s not read (%s)", study, path.name,
                            describe(exc))  # fmt: skip
                continue
            kind = str(ds.get("SOPClassUID", ""))
            sent = queued is None or path.stem in queued
            if kind == SecondaryCaptureImageStorage or (kind == Comprehensive3DSRStorage and sent):
                previous.append(ds)
        return previous

    def _write(self, study: str, ds: Dataset, kind: str) -> ResultObject:
        relative = f"outputs/{study}/{ds.SOPInstanceUID}.dcm"
        self.spool.write(relative, [encode(ds)])
        return ResultObject(str(ds.SOPInstanceUID), str(ds.SOPClassUID), relative, kind)

    def _state_unwritable(self, job: Job, exc: StateError) -> None:
        """The state database could not be written (locked past its busy timeout, a full
        disk, an I/O error): passing, like a full spool. The job waits and is retried; it
        neither fails as an internal error nor counts as a start cut short by a crash."""
        log.warning("study %s: %s; retrying in %.0f s", job.study_uid, exc, STATE_RETRY_SECONDS)
        self._retry_at[job.id] = time.monotonic() + STATE_RETRY_SECONDS
        try:
            self.state.job_ran_out(job.id)
        except StateError as again:  # still unwritable: this start may count, logged
            log.warning("study %s: its start could not be undone: %s", job.study_uid, again)

    def _retry_later(self, job: Job, seconds: float) -> None:
        """Leave ``job`` pending, by choice (not a start cut short), for ``seconds``."""
        self._retry_at[job.id] = time.monotonic() + seconds
        self.state.job_ran_out(job.id)

    def _engine_unavailable(
        self, job: Job, exc: EngineRuntimeError | EngineUnavailableError
    ) -> None:
        failures = self._engine_failures.get(job.id, 0) + 1
        self._engine_failures[job.id] = failures
        if failures >= _MAX_ENGINE_RETRIES:
            self._fail(job, "engine", f"engine failed {failures} times: {describe(exc)}")
            return
        self._retry_later(job, _RETRY_SECONDS)
        log.warning("study %s: engine could not run (%s); retry %d in %.0f s", job.study_uid,
                    exc, failures, _RETRY_SECONDS)  # fmt: skip
