"""ONNX Runtime against torch for the packaged fusion engines (the osteoporosis network
reloads its fitted reduction from the checkpoint; the ONNX graph carries it as constants)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.runtimes import RuntimeOptions, open_runtime


def inputs(engine: str, count: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    if engine == "hip_multimodal":
        text = rng.normal(size=(count, 384)).astype(np.float32)
        return {
            "radiograph": rng.normal(size=(count, 1, 64, 64)).astype(np.float32),
            "ct": rng.normal(size=(count, 1, 16, 32, 32)).astype(np.float32),
            "text": text / np.linalg.norm(text, axis=1, keepdims=True),
            "present": np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0]], np.float32)[:count],
        }
    missing = np.array([[0] * 7, [1, 0, 0, 0, 1, 1, 1], [1] * 7], np.float32)[:count]
    return {
        "image": rng.normal(size=(count, 1, 80, 80)).astype(np.float32),
        "clinical": rng.normal(size=(count, 7)).astype(np.float32) * (1 - missing),
        "missing": missing,
    }


@pytest.mark.parametrize("engine", ["hip_multimodal", "osteoporosis"])
def test_onnxruntime_matches_torch(fusion_cache: Path, engine: str) -> None:
    batch = inputs(engine)
    results = {}
    for backend in ("torch", "onnxruntime"):
        with open_runtime(fusion_cache / engine, RuntimeOptions(backend=backend)) as runtime:
            results[backend] = runtime.infer(batch)
    torch_out, onnx_out = results["torch"], results["onnxruntime"]
    assert sorted(torch_out) == sorted(onnx_out)
    # fp32 on both sides, different kernels: within 1e-4 absolute or relative (feature maps
    # reach tens, where fp32 kernels differ by ~1e-4).
    for name, value in torch_out.items():
        np.testing.assert_allclose(onnx_out[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
