"""open_runtime and the Runtime protocol on the CPU backends (onnxruntime, torch)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from races import ClosingBatch

from engines.manifest import MANIFEST_NAME, ManifestError, read_manifest
from engines.runtimes import (
    EngineRuntimeError,
    InferenceInputError,
    RuntimeOptions,
    open_runtime,
    resolve_backend,
)
from engines.runtimes.base import Runtime
from engines.runtimes.onnx import OnnxRuntime
from engines.runtimes.torch_runtime import TorchRuntime


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(count).normal(size=(count, 1, 64, 64)).astype(np.float32)


def test_onnxruntime_and_torch_agree(hip_screen_engine: Path) -> None:
    batch = {"image": _images(3)}
    with open_runtime(hip_screen_engine, RuntimeOptions(backend="onnxruntime")) as onnx:
        assert isinstance(onnx, OnnxRuntime)
        from_onnx = onnx.infer(batch)
    with open_runtime(hip_screen_engine, RuntimeOptions(backend="torch")) as torch_runtime:
        assert isinstance(torch_runtime, TorchRuntime)
        from_torch = torch_runtime.infer(batch)
    assert list(from_onnx) == list(from_torch) == ["logits", "features"]
    assert from_onnx["logits"].shape == (3, 8)
    assert from_onnx["features"].shape == (3, 2048, 2, 2)
    for name, value in from_onnx.items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(from_torch[name], value, atol=1e-4)


def test_auto_is_onnxruntime_without_a_gpu() -> None:
    from engines.runtimes import gpu_available

    if gpu_available():
        pytest.skip("a GPU with TensorRT is present: auto picks tensorrt")
    assert resolve_backend("auto") == "onnxruntime"
    assert resolve_backend("torch") == "torch"


def test_unknown_backend_is_refused(hip_screen_engine: Path) -> None:
    with pytest.raises(EngineRuntimeError, match=r"engines\.backend: expected one of .*got 'cuda'"):
        open_runtime(hip_screen_engine, RuntimeOptions(backend="cuda"))


@pytest.fixture
def runtime(hip_screen_engine: Path) -> OnnxRuntime:
    opened = open_runtime(hip_screen_engine, RuntimeOptions(backend="onnxruntime"))
    assert isinstance(opened, OnnxRuntime)
    return opened


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({"img": np.zeros((1, 1, 64, 64))}, r"inputs: expected \['image'\], got \['img'\]"),
        ({}, r"inputs: expected \['image'\], got \[\]"),
        (
            {"image": np.zeros((1, 1, 32, 64))},
            r"image: expected shape \[-1, 1, 64, 64\].*got \[1, 1, 32, 64\]",
        ),
        ({"image": np.zeros((1, 64, 64))}, r"image: expected shape .*got \[1, 64, 64\]"),
        ({"image": np.zeros((0, 1, 64, 64))}, "expected at least one item, got an empty batch"),
        ({"image": np.array([["a"]])}, "image: expected numbers, got dtype <U1"),
    ],
)
def test_bad_batches_are_refused(
    runtime: OnnxRuntime, batch: dict[str, np.ndarray], match: str
) -> None:
    with runtime, pytest.raises(InferenceInputError, match=match):
        runtime.infer(batch)


def test_batch_size_mismatch_between_inputs_is_refused() -> None:
    # hip_screen has one input; the check is the protocol's, shown on a two-input spec.
    from engines.manifest import TensorSpec
    from engines.runtimes.base import check_batch

    specs = (TensorSpec("ap", (-1, 1, 8, 8)), TensorSpec("lateral", (-1, 1, 8, 8)))
    with pytest.raises(InferenceInputError, match="lateral: batch size 3 differs from 2"):
        check_batch(specs, {"ap": np.zeros((2, 1, 8, 8)), "lateral": np.zeros((3, 1, 8, 8))})


def test_infer_after_close_is_refused(runtime: OnnxRuntime) -> None:
    runtime.close()
    runtime.close()  # closing twice is harmless
    with pytest.raises(EngineRuntimeError, match="hip_screen on onnxruntime: runtime is closed"):
        runtime.infer({"image": _images(1)})


def test_tampered_onnx_is_refused(hip_screen_engine: Path, tmp_path: Path) -> None:
    # Only what onnxruntime reads: the manifest and the fp32 ONNX (the shared engine stays intact).
    folder = tmp_path / "hip_screen"
    folder.mkdir()
    shutil.copyfile(hip_screen_engine / MANIFEST_NAME, folder / MANIFEST_NAME)
    shutil.copyfile(hip_screen_engine / "model.onnx", folder / "model.onnx")
    with (folder / "model.onnx").open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match=r"artefact 'onnx_fp32' .* has SHA-256 [0-9a-f]{64}"):
        open_runtime(folder, RuntimeOptions(backend="onnxruntime"))


def test_unknown_onnx_precision_is_refused(hip_screen_engine: Path) -> None:
    manifest = read_manifest(hip_screen_engine)
    with pytest.raises(
        EngineRuntimeError, match=r"^precision: expected one of \('fp32', 'fp16'\), got 'int8'$"
    ):
        OnnxRuntime(manifest, hip_screen_engine, precision="int8")


def test_unavailable_onnx_providers_are_refused(hip_screen_engine: Path) -> None:
    manifest = read_manifest(hip_screen_engine)
    with pytest.raises(
        EngineRuntimeError,
        match=r"^onnxruntime: none of the providers \['NoSuchExecutionProvider'\] is available "
        r"\(available: \[.*'CPUExecutionProvider'.*\]\)$",
    ):
        OnnxRuntime(manifest, hip_screen_engine, providers=("NoSuchExecutionProvider",))


@pytest.mark.parametrize("backend", [TorchRuntime, OnnxRuntime])
def test_a_runtime_closed_while_a_batch_is_checked(
    hip_screen_engine: Path, backend: type[Runtime]
) -> None:
    # A stop closes the engines while a job's batch may be on its way in: an
    # EngineRuntimeError (the job is retried), never an AttributeError on a released session.
    runtime = backend(read_manifest(hip_screen_engine), hip_screen_engine)
    with pytest.raises(
        EngineRuntimeError, match=rf"^hip_screen on {backend.backend}: runtime is closed$"
    ) as info:
        runtime.infer(ClosingBatch(runtime, _images(1)))
    assert info.traceback[-1].name == "_run"  # the backend's own guard, not infer's
