from __future__ import annotations

import logging
import math
import sqlite3
from pathlib import Path

import pytest
from metric_sources import watched_metrics
from prometheus_client import CollectorRegistry, generate_latest

from dicom_node.config import AssemblyConfig
from dicom_node.metrics import (
    FAILURE_REASONS,
    MAX_CALLING_AE_LABELS,
    PARTIAL_REASONS,
    Metrics,
    sop_class_name,
)
from dicom_node.state import State


def families(registry: CollectorRegistry) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in registry.collect():
        out[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return out


def test_every_metric_is_prefixed_and_the_failure_reasons_start_at_zero() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    found = families(registry)
    assert found and all(name.startswith("dicom_node_") for name in found)
    failures = {
        s[1]["reason"]: s[2] for s in found["dicom_node_job_failures"] if s[0].endswith("_total")
    }
    assert failures == dict.fromkeys(FAILURE_REASONS, 0.0)
    partial = {
        s[1]["reason"]: s[2] for s in found["dicom_node_partial_reports"] if s[0].endswith("_total")
    }
    assert partial == dict.fromkeys(PARTIAL_REASONS, 0.0) and set(PARTIAL_REASONS) <= set(
        FAILURE_REASONS
    )


def test_histogram_buckets_fit_the_durations_they_measure() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.store_seconds.observe(0.004)
    metrics.time_to_result_seconds.labels("pacs").observe(2.6)
    found = families(registry)
    store = {s[1]["le"] for s in found["dicom_node_store_seconds"] if s[0].endswith("_bucket")}
    assert "0.005" in store and "0.001" in store  # milliseconds, not the library's defaults
    result = {s[1]["le"] for s in found["dicom_node_time_to_result_seconds"] if "le" in s[1]}
    assert {"2.0", "3.0", "600.0"} <= result


def test_sop_class_labels_are_names_or_other() -> None:
    assert (
        sop_class_name("1.2.840.10008.5.1.4.1.1.1.1")
        == "Digital X-Ray Image Storage - For Presentation"
    )
    assert sop_class_name("1.2.3.4.5") == "other"


def test_studies_and_outbox_are_read_from_the_state_at_scrape_time(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db", AssemblyConfig())
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.watch_state(state.counts)
    metrics.watch_spool(tmp_path)
    found = families(registry)
    studies = {s[1]["state"]: s[2] for s in found["dicom_node_studies"]}
    assert studies == {"receiving": 0.0, "complete": 0.0}
    assert found["dicom_node_dead_letters"] == [("dicom_node_dead_letters", {}, 0.0)]
    assert found["dicom_node_spool_free_bytes"][0][2] > 0
    state.close()


def test_a_failing_scrape_time_source_costs_only_its_own_samples(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = True

    def counts() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        if broken:
            raise sqlite3.OperationalError("database is locked")
        return {"receiving": 1}, {}

    def problems() -> dict[str, str]:
        raise RuntimeError("readiness probe crashed")

    def destinations() -> dict[str, bool]:
        raise RuntimeError("echo monitor gone")

    registry = watched_metrics(tmp_path / "missing", counts, problems, destinations).registry
    with caplog.at_level(logging.WARNING, logger="dicom_node.metrics"):
        found = families(registry)
        generate_latest(registry)  # a second scrape: the same errors are not logged again
    assert math.isnan(found["dicom_node_spool_free_bytes"][0][2])
    assert found["dicom_node_ready"] == [("dicom_node_ready", {}, 0.0)]  # as /readyz: not ready
    assert "dicom_node_studies" not in found and "dicom_node_dead_letters" not in found
    assert "dicom_node_destination_up" not in found
    assert ("dicom_node_jobs_total", {"outcome": "done"}, 1.0) in found["dicom_node_jobs"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4
    assert any("spool's free space" in m and "FileNotFoundError" in m for m in messages)
    assert any("state database" in m and "database is locked" in m for m in messages)
    broken = False
    with caplog.at_level(logging.INFO, logger="dicom_node.metrics"):
        found = families(registry)
    assert found["dicom_node_studies"][0] == ("dicom_node_studies", {"state": "receiving"}, 1.0)
    assert "state database readable again" in caplog.text


def test_calling_ae_labels_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    with caplog.at_level(logging.WARNING, logger="dicom_node.metrics"):
        labels = [metrics.calling_ae_label(f"MODALITY{i}") for i in range(100)]
    assert labels[:MAX_CALLING_AE_LABELS] == [f"MODALITY{i}" for i in range(MAX_CALLING_AE_LABELS)]
    assert set(labels[MAX_CALLING_AE_LABELS:]) == {"other"}
    assert metrics.calling_ae_label("MODALITY0") == "MODALITY0"  # a known title keeps its own
    assert len(caplog.records) == 1 and 'calling_ae="other"' in caplog.text
