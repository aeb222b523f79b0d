"""The fusion engines behind a real tritonserver: CT volume, text embedding, presence mask
and clinical values go through Triton unchanged (compared with local onnxruntime)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonserver import TritonUnavailableError, run_tritonserver

from engines.manifest import read_manifest
from engines.runtimes.onnx import OnnxRuntime
from engines.runtimes.triton import TritonRuntime
from engines.triton_repo import write_triton_repo


@pytest.fixture(scope="module")
def fusion_triton(fusion_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("triton-fusion")
    folders = [fusion_cache / "hip_multimodal", fusion_cache / "osteoporosis"]
    write_triton_repo(
        folders, work / "models", platform="python", max_batch_size=4, preferred_batch_sizes=(4,)
    )
    try:
        with run_tritonserver(work / "models", work) as url:
            yield url
    except TritonUnavailableError as exc:
        pytest.skip(str(exc))


def batch(engine: str, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(count)
    if engine == "hip_multimodal":
        present = np.ones((count, 3), np.float32)
        present[0, 1] = 0.0  # the first item has no CT
        text = rng.normal(size=(count, 384)).astype(np.float32)
        return {
            "radiograph": rng.normal(size=(count, 1, 64, 64)).astype(np.float32),
            "ct": rng.normal(size=(count, 1, 16, 32, 32)).astype(np.float32),
            "text": text / np.linalg.norm(text, axis=1, keepdims=True),
            "present": present,
        }
    missing = (rng.random((count, 7)) < 0.3).astype(np.float32)
    return {
        "image": rng.normal(size=(count, 1, 80, 80)).astype(np.float32),
        "clinical": rng.normal(size=(count, 7)).astype(np.float32) * (1 - missing),
        "missing": missing,
    }


@pytest.mark.parametrize("engine", ["hip_multimodal", "osteoporosis"])
def test_triton_matches_onnxruntime(fusion_cache: Path, fusion_triton: str, engine: str) -> None:
    folder = fusion_cache / engine
    manifest = read_manifest(folder)
    inputs = batch(engine, 5)  # > max_batch_size 4: split into two requests
    with OnnxRuntime(manifest, folder) as local:
        expected = local.infer(inputs)
    with TritonRuntime(manifest, folder, url=fusion_triton, timeout_seconds=60) as remote:
        got = remote.infer(inputs)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4)
    if engine == "hip_multimodal":
        assert got["attention"][0, 1] == 0.0  # the masked CT got no weight
