"""The node's Prometheus metrics: one object, its registry injectable (a fresh one per test).

Every name starts with ``dicom_node_``; no label carries patient data (labels are
SOP class names, AE titles, engine and finding names, priorities, destinations).
Histogram buckets fit the durations measured: milliseconds for a C-STORE,
seconds for inference and the pipeline, up to minutes for assembly and time to
result. Values the state database already holds (studies by state, the outbox)
are read at scrape time by a collector, so they survive restarts and never drift.
A value read at scrape time that fails is left out (or exported as NaN, or 0 for
``dicom_node_ready``) with a logged warning: one broken source never fails the scrape.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydicom.uid import UID

from dicom_node.errors import describe

STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RESULT_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

FAILURE_REASONS = ("pixel_data", "patients", "report", "spool", "engine", "other")
PARTIAL_REASONS = ("pixel_data", "engine")

# Distinct calling_ae label values kept; later titles are counted as "other". Any peer may
# call when node.allowed_calling_aes is empty, and each title would be new series forever.
MAX_CALLING_AE_LABELS = 64

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def sop_class_name(uid: str) -> str:
    """A readable, bounded label: the SOP class's name, or "other" for an unknown UID."""
    name = UID(uid).name
    return "other" if name == uid else name


class _Failures:
    """Logs a scrape-time read's failure once per distinct error, and again after a recovery."""

    def __init__(self, what: str, outcome: str) -> None:
        self._what = what
        self._outcome = outcome
        self._last: str | None = None

    def read(self, read: Callable[[], _T]) -> _T | None:
        """``read()``, or None when it raised (the scrape goes on without it)."""
        try:
            value = read()
        except Exception as exc:  # one broken source costs only its own samples
            error = describe(exc)
            if error != self._last:  # once per distinct error, not once per scrape
                self._last = error
                log.warning(
                    "metrics: cannot read %s (%s); %s", self._what, error, self._outcome,
                    exc_info=True,
                )  # fmt: skip
            return None
        if self._last is not None:
            self._last = None
            log.info("metrics: %s readable again", self._what)
        return value


class _StateCollector(Collector):
    """Studies by state, the outbox by state and destination: read from SQLite per scrape."""

    def __init__(self, read: Callable[[], tuple[dict[str, int], dict[tuple[str, str], int]]]):
        self._read = read
        self._failures = _Failures(
            "the state database", "studies, outbox and dead letters left out of the scrape"
        )

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = self._failures.read(self._read)
        if counts is None:
            return
        studies, outbox = counts
        study_family = GaugeMetricFamily(
            "dicom_node_studies", "Studies in the state database by state", labels=["state"]
        )
        for state, count in sorted(studies.items()):
            study_family.add_metric([state], count)
        depth = GaugeMetricFamily(
            "dicom_node_outbox_items",
            "Result objects in the outbox by state (pending, sent, dead) and destination",
            labels=["state", "destination"],
        )
        dead = 0
        for (state, destination), count in sorted(outbox.items()):
            depth.add_metric([state, destination], count)
            if state == "dead":
                dead += count
        letters = GaugeMetricFamily(
            "dicom_node_dead_letters", "Result objects that exhausted sending.max_attempts"
        )
        letters.add_metric([], dead)
        yield from (study_family, depth, letters)


class _DestinationCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, bool]]) -> None:
        self._read = read
        self._failures = _Failures("destination status", "dicom_node_destination_up left out")

    def collect(self) -> Iterable[GaugeMetricFamily]:
        destinations = self._failures.read(self._read)
        if destinations is None:
            return
        family = GaugeMetricFamily(
            "dicom_node_destination_up",
            "1 when the destination answered its last C-ECHO (or its folder is writable)",
            labels=["destination"],
        )
        for name, up in sorted(destinations.items()):
            family.add_metric([name], 1.0 if up else 0.0)
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.associations_active = Gauge(
            "dicom_node_associations_active", "Open incoming associations", registry=r
        )
        self.associations = Counter(
            "dicom_node_associations", "Incoming associations by outcome and reason",
            ["outcome", "reason"], registry=r,
        )  # fmt: skip
        self.instances_received = Counter(
            "dicom_node_instances_received", "Instances stored (acknowledged) by SOP class and "
            "calling AE", ["sop_class", "calling_ae"], registry=r,
        )  # fmt: skip
        self.bytes_received = Counter(
            "dicom_node_received_bytes", "Bytes of instances stored, by SOP class and calling AE",
            ["sop_class", "calling_ae"], registry=r,
        )  # fmt: skip
        self.instances_refused = Counter(
            "dicom_node_instances_refused", "Instances answered with a failure status, by status",
            ["status"], registry=r,
        )  # fmt: skip
        self.purged_studies = Counter(
            "dicom_node_purged_studies", "Finished studies (or studies holding only the node's "
            "own returned results) whose files left the spool (storage.retention_hours)",
            registry=r,
        )  # fmt: skip
        self.purged_bytes = Counter(
            "dicom_node_purged_bytes", "Bytes of instances and results removed from the spool",
            registry=r,
        )  # fmt: skip
        self.store_seconds = Histogram(
            "dicom_node_store_seconds", "C-STORE handler time: header, durable write, index",
            buckets=STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.assembly_wait_seconds = Histogram(
            "dicom_node_assembly_wait_seconds", "First instance received to study complete",
            buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "dicom_node_inference_seconds", "One engine batch (a study's hips) on its backend",
            ["engine", "backend"], buckets=INFERENCE_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "dicom_node_stage_seconds", "Pipeline stage time per study (read, analyse, report, "
            "write)", ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.time_to_result_seconds = Histogram(
            "dicom_node_time_to_result_seconds", "First instance received to the study's SR "
            "accepted by a destination", ["destination"], buckets=RESULT_BUCKETS, registry=r,
        )  # fmt: skip
        self.jobs = Counter(
            "dicom_node_jobs", "Finished jobs by outcome (done, failed, skipped)", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.job_failures = Counter(
            "dicom_node_job_failures", "Failed jobs by reason", ["reason"], registry=r
        )
        self.partial_reports = Counter(
            "dicom_node_partial_reports", "Studies reported PARTIAL, by why: an image or header "
            "that could not be read (pixel_data), an engine that failed on some hips (engine)",
            ["reason"], registry=r,
        )  # fmt: skip
        self.triage = Counter(
            "dicom_node_triage", "Hips triaged by engine, reported finding and priority",
            ["engine", "finding", "priority"], registry=r,
        )  # fmt: skip
        self.study_priority = Counter(
            "dicom_node_study_priority", "Studies by triage priority", ["priority"], registry=r
        )
        self.send_attempts = Counter(
            "dicom_node_send_attempts", "Attempts to deliver a result object, by destination and "
            "result (sent, failed, dead)", ["destination", "result"], registry=r,
        )  # fmt: skip
        self.spool_free_bytes = Gauge(
            "dicom_node_spool_free_bytes", "Free bytes on the spool's file system", registry=r
        )
        self.engine_info = Gauge(
            "dicom_node_engine_info", "The engines loaded (value 1)",
            ["name", "version", "backend"], registry=r,
        )  # fmt: skip
        self.up_since = Gauge(
            "dicom_node_start_time_seconds", "When the node started (Unix time)", registry=r
        )
        self.ready = Gauge(
            "dicom_node_ready", "1 when /readyz would answer 200, else 0", registry=r
        )
        for priority in ("URGENT", "FLAG", "NONE"):
            self.study_priority.labels(priority)
        for reason in FAILURE_REASONS:
            self.job_failures.labels(reason)  # exported at 0 from the start, so rate() works
        for outcome in ("done", "failed", "skipped"):
            self.jobs.labels(outcome)
        for reason in PARTIAL_REASONS:
            self.partial_reports.labels(reason)
        self._calling_aes: set[str] = set()
        self._calling_aes_overflowed = False
        self._calling_aes_lock = threading.Lock()

    def calling_ae_label(self, calling_ae: str) -> str:
        """The calling_ae label: the title itself for the first MAX_CALLING_AE_LABELS distinct
        titles, "other" after that (bounded series; with node.allowed_calling_aes set, only
        those titles get this far)."""
        with self._calling_aes_lock:
            if calling_ae in self._calling_aes:
                return calling_ae
            if len(self._calling_aes) < MAX_CALLING_AE_LABELS:
                self._calling_aes.add(calling_ae)
                return calling_ae
            first_overflow, self._calling_aes_overflowed = not self._calling_aes_overflowed, True
        if first_overflow:
            log.warning(
                "metrics: more than %d distinct calling AE titles; later ones are counted as "
                'calling_ae="other" (restrict callers with node.allowed_calling_aes)',
                MAX_CALLING_AE_LABELS,
            )
        return "other"

    def watch_spool(self, root: Path) -> None:
        failures = _Failures("the spool's free space", "dicom_node_spool_free_bytes is NaN")

        def free() -> float:
            usage = failures.read(lambda: shutil.disk_usage(root))
            return math.nan if usage is None else float(usage.free)

        self.spool_free_bytes.set_function(free)

    def watch_readiness(
        self,
        problems: Callable[[], dict[str, str]],
        destinations: Callable[[], dict[str, bool]],
    ) -> None:
        """dicom_node_ready from the readiness check, dicom_node_destination_up per destination
        from the last C-ECHO (both evaluated at scrape time)."""
        failures = _Failures("the readiness check", "dicom_node_ready is 0, as /readyz says")

        def ready() -> float:
            found = failures.read(problems)
            return 0.0 if found is None or found else 1.0  # a broken check is "not ready"

        self.ready.set_function(ready)
        self.registry.register(_DestinationCollector(destinations))

    def watch_state(
        self, read: Callable[[], tuple[dict[str, int], dict[tuple[str, str], int]]]
    ) -> None:
        self.registry.register(_StateCollector(read))
