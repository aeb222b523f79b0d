"""A Metrics object whose scrape-time sources are given: for the tests of failing sources."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from dicom_node.metrics import Metrics

Counts = tuple[dict[str, int], dict[tuple[str, str], int]]


def watched_metrics(
    spool: Path,
    counts: Callable[[], Counts],
    problems: Callable[[], dict[str, str]],
    destinations: Callable[[], dict[str, bool]],
) -> Metrics:
    """Metrics on a fresh registry with one job counted as done, watching ``spool``'s free
    space, ``counts`` (studies, dead letters), ``problems`` (readiness) and ``destinations``."""
    metrics = Metrics(CollectorRegistry())
    metrics.jobs.labels("done").inc()
    metrics.watch_spool(spool)
    metrics.watch_state(counts)
    metrics.watch_readiness(problems, destinations)
    return metrics
