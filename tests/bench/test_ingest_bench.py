"""Smoke test of bench/ingest.py: the node and dcmtk's storescp receive the same small files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "ingest.py"

pytestmark = pytest.mark.skipif(
    shutil.which("storescp") is None, reason="dcmtk is not installed (make test does it)"
)


def test_ingest_bench_runs_the_node_beside_storescp(tmp_path: Path) -> None:
    rows_json = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "small", "--json", str(rows_json)],
        capture_output=True, text=True, check=False, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [row] = json.loads(rows_json.read_text())
    assert (row["set"], row["files"], row["size"]) == ("small", 40, "512x512x16")
    # Every receiver got every file (the script checks counts) and took measurable time.
    receivers = {r["receiver"] for r in row["runs"]}
    assert receivers == {"storescp", "storescp+sync", "fsync ceiling", "node"}
    assert all(r["files"] == 40 and r["seconds"] > 0 for r in row["runs"])
    assert row["ratio"] == pytest.approx(row["storescp_s"] / row["node_s"])
    # One run is a smoke run: no verdict on the target from it.
    assert row["target"] == 0.5 and row["met"] is None
    assert "node/storescp" in done.stdout and "small     40" in done.stdout
    assert ">= 0.5x n/a" in done.stdout
