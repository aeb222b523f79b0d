"""Smoke test of bench/e2e.py: two small studies through Orthanc and the node."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "e2e.py"

pytestmark = pytest.mark.skipif(
    not Path("/usr/sbin/Orthanc").exists(), reason="Orthanc is not installed (make test does it)"
)


def test_e2e_bench_reports_time_to_result(tmp_path: Path, all_engines: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("engines: {backend: onnxruntime, threads: 2}\n")
    row_json = tmp_path / "row.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--studies", "2", "--size", "64", "--config", str(config),
         "--engines", str(all_engines), "--json", str(row_json)],
        capture_output=True, text=True, check=False, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(row_json.read_text())
    assert row["studies"] == 2 and row["backend"] == "onnxruntime"
    assert row["quiet_seconds"] == 2.0
    assert 0 < row["inference_p50"] < row["p50"] <= row["p95"]
    # Nothing completes before its after-release period (0.5 s by default): the Orthanc
    # route sends each instance by a job, on an association of its own, released at once.
    assert row["p50"] > 0.5
    assert "| 2 | onnxruntime | 2.0 |" in done.stdout


def test_fewer_than_one_study_is_refused() -> None:
    # Was: Orthanc and the node started, then a StatisticsError traceback.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--studies", "0"],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "e2e.py: error: --studies: expected 1 or more, got 0" in done.stderr


def test_the_target_does_not_grow_with_a_longer_quiet_period() -> None:
    # A 6 s quiet period made the target 7.2 s, and a 6.25 s p50 'met' it.
    spec = importlib.util.spec_from_file_location("e2e_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    assert e2e.target_seconds(0.2, 2.0) == pytest.approx(3.2)
    assert e2e.target_seconds(0.2, 0.5) == pytest.approx(1.7)
    assert e2e.target_seconds(0.2, 6.0) == pytest.approx(3.2)
