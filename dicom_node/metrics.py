"""The node's Prometheus metrics: one object, its registry injectable (a fresh one per test).

Every name starts with ``dicom_node_``; no label carries patient data (labels are
SOP class names, AE titles, engine and finding names, priorities, destinations).
Histogram buckets fit the durations measured: milliseconds for a C-STORE,
seconds for inference and the pipeline, up to minutes for assembly and time to
result. Values the state database already holds (studies by state, the outbox)
are read at scrape time by a collector, so they survive restarts and never drift.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydicom.uid import UID

STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RESULT_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

FAILURE_REASONS = ("pixel_data", "report", "spool", "engine", "other")


def sop_class_name(uid: str) -> str:
    """A readable, bounded label: the SOP class's name, or "other" for an unknown UID."""
    name = UID(uid).name
    return "other" if name == uid else name


class _StateCollector(Collector):
    """Studies by state, the outbox by state and destination: read from SQLite per scrape."""

    def __init__(self, read: Callable[[], tuple[dict[str, int], dict[tuple[str, str], int]]]):
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        studies, outbox = self._read()
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

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dicom_node_destination_up",
            "1 when the destination answered its last C-ECHO (or its folder is writable)",
            labels=["destination"],
        )
        for name, up in sorted(self._read().items()):
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
            "dicom_node_purged_studies", "Finished studies whose files left the spool "
            "(storage.retention_hours)", registry=r,
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

    def watch_spool(self, root: Path) -> None:
        self.spool_free_bytes.set_function(lambda: float(shutil.disk_usage(root).free))

    def watch_readiness(
        self,
        problems: Callable[[], dict[str, str]],
        destinations: Callable[[], dict[str, bool]],
    ) -> None:
        """dicom_node_ready from the readiness check, dicom_node_destination_up per destination
        from the last C-ECHO (both evaluated at scrape time)."""
        self.ready.set_function(lambda: 0.0 if problems() else 1.0)
        self.registry.register(_DestinationCollector(destinations))

    def watch_state(
        self, read: Callable[[], tuple[dict[str, int], dict[tuple[str, str], int]]]
    ) -> None:
        self.registry.register(_StateCollector(read))
