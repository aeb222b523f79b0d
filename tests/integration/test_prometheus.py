"""A real Prometheus (Debian's) scrapes the node on loopback and sees a study go through."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dicom_clients import send_files
from helpers import pipeline_config
from orthanc import free_port, wait_for

from dicom_node.node import Node
from engines.phantoms.studies import write_study

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed (make test does it)"
)


@contextmanager
def prometheus(work: Path, target_port: int) -> Iterator[int]:
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: dicom-node\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: ready(port), 30, "prometheus to be ready")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def query(port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def value(port: int, expr: str) -> float | None:
    result = query(port, expr)
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


def test_prometheus_scrapes_the_node_and_sees_a_study_go_through(
    tmp_path: Path, engine_cache: Path
) -> None:
    (tmp_path / "out").mkdir()
    cfg = pipeline_config(
        tmp_path / "spool", engine_cache,
        destinations=[{"name": "files", "type": "folder", "path": str(tmp_path / "out")}],
    )  # fmt: skip
    node = Node(cfg)
    node.start()
    try:
        with prometheus(tmp_path / "prometheus", node.http_port) as port:
            wait_for(lambda: value(port, 'up{job="dicom-node"}') == 1.0 or None, 30, "a scrape")
            study = write_study(tmp_path / "study", 701, "normal", "normal", size=64)
            assert send_files(node.port, list(study.files)) == [0]
            wait_for(
                lambda: value(port, 'dicom_node_jobs_total{outcome="done"}') == 1.0 or None,
                60, "the study's job in Prometheus",
            )  # fmt: skip
            assert value(port, "sum(dicom_node_instances_received_total)") == 1.0
            assert value(port, 'dicom_node_studies{state="complete"}') == 1.0
            assert value(port, "dicom_node_dead_letters") == 0.0
            wait_for(
                lambda: value(port, "sum(dicom_node_time_to_result_seconds_count)") == 1.0 or None,
                30, "the time to result",
            )  # fmt: skip
            engines = {r["metric"]["name"] for r in query(port, "dicom_node_engine_info")}  # type: ignore[index]
            assert engines == {"hip_screen", "hipnet"}
            # No label anywhere holds patient data.
            series = query(port, '{__name__=~"dicom_node_.*"}')
            assert series and not any("PHANTOM" in json.dumps(s["metric"]) for s in series)
    finally:
        node.stop(drain_seconds=1)
