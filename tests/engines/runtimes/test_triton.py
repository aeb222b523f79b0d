"""TritonRuntime against a real tritonserver (see conftest.py), compared with onnxruntime."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from engines.manifest import read_manifest
from engines.runtimes import EngineRuntimeError, RuntimeOptions, open_runtime
from engines.runtimes.onnx import OnnxRuntime
from engines.runtimes.triton import TritonRuntime


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 1, 64, 64)).astype(np.float32)


@pytest.mark.parametrize("count", [1, 3, 11])
def test_triton_matches_onnxruntime(hip_screen_engine: Path, triton_url: str, count: int) -> None:
    manifest = read_manifest(hip_screen_engine)
    batch = {"image": _images(count, seed=count)}
    with OnnxRuntime(manifest, hip_screen_engine) as local:
        expected = local.infer(batch)
    # 11 > the model's max_batch_size of 8: the runtime must split the request.
    remote = TritonRuntime(manifest, hip_screen_engine, url=triton_url, timeout_seconds=30)
    with remote:
        assert remote.max_batch_size == 8
        got = remote.infer(batch)
    assert sorted(got) == ["features", "logits"]
    for name, value in expected.items():
        assert got[name].dtype == np.float32 and got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4)


def test_open_runtime_picks_triton(hip_screen_engine: Path, triton_url: str) -> None:
    options = RuntimeOptions(backend="triton", triton_url=triton_url, triton_timeout_seconds=10)
    runtime = open_runtime(hip_screen_engine, options)
    try:
        assert isinstance(runtime, TritonRuntime)
        assert runtime.infer({"image": _images(2)})["logits"].shape == (2, 8)
    finally:
        runtime.close()
    with pytest.raises(EngineRuntimeError, match="runtime is closed"):
        runtime.infer({"image": _images(1)})


def test_model_not_in_repository_is_refused(hip_screen_engine: Path, triton_url: str) -> None:
    manifest = dataclasses.replace(read_manifest(hip_screen_engine), name="absent_engine")
    with pytest.raises(
        EngineRuntimeError, match=rf"Triton at {triton_url}, model 'absent_engine' .*not ready"
    ):
        TritonRuntime(manifest, hip_screen_engine, url=triton_url, timeout_seconds=10)


def test_other_engine_version_is_refused(hip_screen_engine: Path, triton_url: str) -> None:
    manifest = dataclasses.replace(read_manifest(hip_screen_engine), version="9.0.0")
    with pytest.raises(
        EngineRuntimeError, match=r"serves engine version '1\.2\.3-test'.*says '9\.0\.0'"
    ):
        TritonRuntime(manifest, hip_screen_engine, url=triton_url, timeout_seconds=10)


def test_other_onnx_is_refused(hip_screen_engine: Path, triton_url: str) -> None:
    manifest = read_manifest(hip_screen_engine)
    artefacts = {
        **manifest.artefacts,
        "onnx_fp32": dataclasses.replace(manifest.artefacts["onnx_fp32"], sha256="0" * 64),
    }
    manifest = dataclasses.replace(manifest, artefacts=artefacts)
    with pytest.raises(EngineRuntimeError, match=r"serves ONNX SHA-256 .*says '0{64}'"):
        TritonRuntime(manifest, hip_screen_engine, url=triton_url, timeout_seconds=10)


def test_unreachable_server_names_the_url(hip_screen_engine: Path, free_port: int) -> None:
    url = f"127.0.0.1:{free_port}"  # nothing listens there
    manifest = read_manifest(hip_screen_engine)
    with pytest.raises(EngineRuntimeError, match=rf"Triton at {url}, .*liveness check .*failed"):
        TritonRuntime(manifest, hip_screen_engine, url=url, timeout_seconds=5)


def test_bad_timeout_is_refused(hip_screen_engine: Path) -> None:
    with pytest.raises(EngineRuntimeError, match="timeout_seconds: expected > 0, got 0"):
        TritonRuntime(read_manifest(hip_screen_engine), hip_screen_engine, timeout_seconds=0)
