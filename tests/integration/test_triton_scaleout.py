"""Scale-out: two node processes share one Triton Inference Server and agree with local inference.

The model repository comes from ``dicom-node engines triton-repo`` (python-backend models
running the engines' ONNX files: the bundled tritonserver has no onnxruntime backend); each
node keeps its own spool and state and reads only the manifests from the engine cache.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dicom_clients import send_files
from helpers import FORCE_FINDINGS, SCREEN_RULE, pipeline_config
from node_process import NodeProcess
from orthanc import free_port, wait_for
from tritonserver import TritonUnavailableError, run_tritonserver

from dicom_node.analyse import analyse_study, read_sources
from dicom_node.infer import EngineSet
from engines.phantoms.studies import write_study


def node_config(tmp: Path, engine_cache: Path, url: str) -> dict[str, object]:
    (tmp / "results").mkdir(exist_ok=True)
    return {
        "node": {"host": "127.0.0.1", "port": free_port(), "drain_seconds": 2},
        "storage": {"spool_dir": str(tmp / "spool"), "min_free_bytes": 0},
        "assembly": {"quiet_seconds": 1, "after_release_seconds": 0.2},
        "engines": {"cache_dir": str(engine_cache), "backend": "triton",
                    "triton": {"url": url, "timeout_seconds": 60}},
        "routing": {"rules": [SCREEN_RULE]},
        "triage": FORCE_FINDINGS,
        "destinations": [{"name": "files", "type": "folder", "path": str(tmp / "results")}],
        "metrics": {"port": 0},
    }  # fmt: skip


@pytest.fixture
def triton_url(tmp_path: Path, engine_cache: Path) -> Iterator[str]:
    cli_config = tmp_path / "cli.yaml"
    cli_config.write_text(yaml.safe_dump({"engines": {"cache_dir": str(engine_cache)}}))
    repo = tmp_path / "models"
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node", "engines", "triton-repo", str(repo),
         "--platform", "python", "--config", str(cli_config)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    try:
        with run_tritonserver(repo, tmp_path / "triton") as url:
            yield url
    except TritonUnavailableError as exc:
        pytest.skip(str(exc))


def test_two_nodes_on_one_triton_give_the_local_results(
    tmp_path: Path, engine_cache: Path, triton_url: str
) -> None:
    study = write_study(tmp_path / "study", 601, "normal", "total_hip_arthroplasty",
                        failure={"L": "aseptic_loosening"}, size=64)  # fmt: skip
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    nodes = [
        NodeProcess(tmp_path / name, node_config(tmp_path / name, engine_cache, triton_url))
        for name in ("a", "b")
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            assert send_files(node.port, list(study.files)) == [0, 0]
        summaries = []
        for node in nodes:
            results = node.folder / "results"
            wait_for(lambda r=results: len(list(r.rglob("*.dcm"))) == 3 or None, 120,
                     f"results of node {node.folder.name}")  # fmt: skip
            with sqlite3.connect(node.folder / "spool" / "state.sqlite3") as db:
                [(summary,)] = db.execute("SELECT summary FROM jobs WHERE state = 'done'")
            summaries.append(json.loads(summary))
    finally:
        for node in nodes:
            node.kill()
    # Both replicas agree with each other and with in-process onnxruntime inference.
    local_cfg = pipeline_config(tmp_path / "local", engine_cache, triage=FORCE_FINDINGS)
    engines = EngineSet(local_cfg.engines, ["hip_screen", "hipnet"])
    try:
        images = read_sources([(p, "PACS") for p in study.files])
        local = analyse_study(study.identity.study_uid, images, engines, local_cfg)
    finally:
        engines.close()
    expected = {
        (h.decision.prediction.task.engine, h.decision.prediction.task.side): h.decision
        for h in local.hips
    }
    for summary in summaries:
        assert summary["priority"] == local.priority
        assert len(summary["hips"]) == len(expected) == 4
        for hip in summary["hips"]:
            decision = expected[(hip["engine"], hip["side"])]
            assert hip["priority"] == decision.priority
            for reported in hip["reported"]:
                assert reported["probability"] == pytest.approx(
                    decision.prediction.probability(reported["name"]), abs=1e-3
                )
