"""Smoke test of bench/ingest.py: the node and dcmtk's storescp receive the same small files."""

from __future__ import annotations

import importlib.util
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
        [sys.executable, str(SCRIPT), "--quick", "--only", "small", "--json", str(rows_json),
         "--work", "work"],  # relative: was the spool at work/work/node-0, and a traceback
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
    assert list((tmp_path / "work").iterdir()) == []  # its folder there, removed at the end


def test_fewer_than_one_run_is_refused() -> None:
    # Was: the files made, no receiver run, then a StatisticsError traceback.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", "0"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "ingest.py: error: --runs: expected 1 or more, got 0" in done.stderr


def test_the_file_system_of_the_work_folder_is_named() -> None:
    # On tmpfs fsync costs nothing: the durable figures were memory speed, unannounced.
    spec = importlib.util.spec_from_file_location("ingest_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    ingest = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ingest  # its dataclasses look their module up
    spec.loader.exec_module(ingest)
    assert ingest.file_system(Path("/proc/self")) == "proc"
    shm = Path("/dev/shm")
    if shm.is_dir():
        assert ingest.file_system(shm / "anything") in ("tmpfs", "ramfs")
