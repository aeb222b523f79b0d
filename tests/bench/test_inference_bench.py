"""Smoke test of bench/inference.py: a tiny hip_screen, both backends, one call each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "inference.py"


@pytest.mark.timeout(90)
def test_inference_bench_times_both_backends(tmp_path: Path) -> None:
    rows_json = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--engines", "hip_screen", "--size", "64",
         "--batches", "1", "--iterations", "1", "--repeats", "1",
         # One thread: two OpenMP threads on a busy 2-core machine can be 30x slower.
         "--threads", "1",
         "--work", str(tmp_path / "engines"), "--markdown", "--json", str(rows_json)],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line.split() for line in done.stdout.splitlines() if line.startswith("hip_screen")]
    assert {cells[3] for cells in table} == {"torch", "onnxruntime"}
    for cells in table:
        assert cells[1] == "64x64"
        assert all(float(value) > 0 for value in cells[4:8])  # ms, images/s, GFLOP, GFLOP/s
    assert "| hip_screen | 64x64 | 1 | onnxruntime |" in done.stdout
    # The backends are timed in turns, the order of each round printed.
    assert "rounds of hip_screen at batch 1: " in done.stdout
    assert "the backends timed in turns within each round" in done.stdout
    assert "host reference: an fp32 2048x2048 matrix product through onnxruntime" in done.stdout
    rows = json.loads(rows_json.read_text())
    assert all(r["matmul_gflop_per_s"] > 0 and r["of_matmul"] > 0 for r in rows)
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime"]
    assert all(r["seconds"] > 0 and r["gflop_per_image"] > 0 for r in rows)
    assert rows[1]["ratio"] > 0
    folder = tmp_path / "engines" / "hip_screen-64"
    assert (folder / "manifest.yaml").is_file()
    # The folder is stamped with the export code it was packaged by (see package()).
    assert len((folder / "export-code.sha256").read_text().strip()) == 64


def test_a_folder_packaged_for_another_network_is_packaged_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The catalog names each engine's network: a folder of another one would count one
    # model's FLOPs and time another's.
    import dataclasses
    import importlib.util

    from engines.manifest import read_manifest, write_manifest

    spec = importlib.util.spec_from_file_location("inference_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    assert "engines/catalog.py" in bench.EXPORT_CODE
    folder = bench.package("hip_screen", 64, tmp_path)
    manifest = read_manifest(folder)
    write_manifest(dataclasses.replace(manifest, model="resnet50"), folder)
    assert bench.package("hip_screen", 64, tmp_path) == folder
    assert read_manifest(folder).model == manifest.model == "hip_screen"


def test_an_engine_the_bench_does_not_measure_is_refused() -> None:
    # The fusion engines crashed in packaging (osteoporosis) or the FLOP count (multimodal).
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--engines", "hip_screen,osteoporosis"],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--engines: ['osteoporosis'] not measured here; expected some of ['hip_screen', " in (
        done.stderr
    )


def load_bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("inference_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


def test_each_round_times_every_backend_once_in_a_seeded_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_bench(monkeypatch)
    orders = bench.rounds_order("hipnet", 1, 8)
    assert len(orders) == 8
    assert all(sorted(order) == sorted(bench.BACKENDS) for order in orders)
    assert len(set(orders)) == 2  # both orders occur: neither backend always goes first
    assert bench.rounds_order("hipnet", 1, 8) == orders  # repeatable


def test_a_worker_that_dies_is_reported_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = load_bench(monkeypatch)
    with pytest.raises(
        RuntimeError, match=r"(?s)torch worker on empty exited with 1: .*cannot read manifest"
    ):
        bench.Worker(tmp_path / "empty", "torch", 1, tmp_path / "log")
