"""TensorRT runtime: pure helpers everywhere; engine build and parity only on a GPU."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engines.manifest import TensorSpec, read_manifest
from engines.runtimes import EngineRuntimeError, RuntimeOptions, open_runtime
from engines.runtimes.tensorrt import (
    PlanTarget,
    batch_slices,
    check_batch_limits,
    cuda_device_count,
    numpy_dtype,
    plan_cache_key,
    plan_path,
    profile_shapes,
    write_atomic,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_cache_key_changes_with_everything_the_plan_depends_on() -> None:
    target = PlanTarget("10.3.0", "NVIDIA H100 80GB HBM3", "9.0", "12.4")
    base = ("a" * 64, target, 8, 8, 4 << 30)
    key = plan_cache_key(*base)
    assert len(key) == 64 and int(key, 16) >= 0
    assert plan_cache_key(*base) == key  # stable across calls and processes
    others = ("b" * 64, replace(target, tensorrt_version="10.4.0"), 16, 4, 2 << 30)
    for i, other in enumerate(others):
        changed = list(base)
        changed[i] = other
        assert plan_cache_key(*changed) != key, f"field {i} is not in the key"  # type: ignore[arg-type]
    for field, value in (("gpu_name", "NVIDIA A100"), ("compute_capability", "8.0"),
                         ("cuda_version", "11.8")):  # fmt: skip
        assert plan_cache_key("a" * 64, replace(target, **{field: value}), 8, 8, 4 << 30) != key
    # Fields are separated: moving a character between fields changes the key.
    split = PlanTarget("23", "g", "9.0", "12.4"), PlanTarget("3", "g", "9.0", "12.4")
    assert plan_cache_key("x1", split[0], 1, 1, 1) != plan_cache_key("x12", split[1], 1, 1, 1)
    assert plan_path(Path("/cache"), key) == Path(f"/cache/{key}.plan")


def test_profile_shapes_cover_batch_one_to_max() -> None:
    spec = TensorSpec("image", (-1, 1, 512, 512))
    assert profile_shapes(spec, 4, 8) == ((1, 1, 512, 512), (4, 1, 512, 512), (8, 1, 512, 512))


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        (
            (1, 1, 64, 64),
            r"image: expected a dynamic batch axis first \(-1\), got shape \[1, 1, 64, 64\]",
        ),
        ((), r"image: expected a dynamic batch axis first \(-1\), got shape \[\]"),
        (
            (-1, 1, -1, 64),
            r"image: only the batch axis may be dynamic, got shape \[-1, 1, -1, 64\]",
        ),
    ],
)
def test_profile_shapes_refuse_other_dynamic_axes(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(EngineRuntimeError, match=match):
        profile_shapes(TensorSpec("image", shape), 1, 8)


def test_batch_limits() -> None:
    assert check_batch_limits(8, None) == 8
    assert check_batch_limits(8, 2) == 2
    with pytest.raises(EngineRuntimeError, match="max_batch: expected 1 or more, got 0"):
        check_batch_limits(0, None)
    with pytest.raises(
        EngineRuntimeError, match=r"opt_batch: expected 1\.\.8 \(max_batch\), got 9"
    ):
        check_batch_limits(8, 9)
    with pytest.raises(
        EngineRuntimeError, match=r"opt_batch: expected 1\.\.8 \(max_batch\), got 0"
    ):
        check_batch_limits(8, 0)


def test_batches_are_split_at_the_profile_maximum() -> None:
    assert batch_slices(3, 8) == [slice(0, 3)]
    assert batch_slices(8, 8) == [slice(0, 8)]
    assert batch_slices(11, 4) == [slice(0, 4), slice(4, 8), slice(8, 11)]


def test_dtype_mapping() -> None:
    assert numpy_dtype("FLOAT") == np.float32
    assert numpy_dtype("HALF") == np.float16
    assert numpy_dtype("INT64") == np.int64
    assert numpy_dtype("BOOL") == np.bool_
    with pytest.raises(EngineRuntimeError, match="I/O data type 'BF16' is not supported"):
        numpy_dtype("BF16")


def test_write_atomic_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "k.plan"
    write_atomic(target, b"plan-1")
    assert target.read_bytes() == b"plan-1"
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"plan-1"  # the old plan survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["k.plan"]


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_without_the_gpu_extra(hip_screen_engine: Path, tmp_path: Path) -> None:
    assert cuda_device_count() == 0
    with pytest.raises(
        EngineRuntimeError, match=r"tensorrt backend needs the gpu extra \(tensorrt, pycuda\)"
    ):
        open_runtime(hip_screen_engine, RuntimeOptions(backend="tensorrt", plan_cache=tmp_path))


@pytest.mark.gpu
@pytest.mark.timeout(900)  # the first FP16 build of ResNet-50 takes minutes
def test_tensorrt_matches_onnxruntime_and_caches_the_plan(
    hip_screen_engine: Path, tmp_path: Path
) -> None:
    from engines.runtimes.onnx import OnnxRuntime
    from engines.runtimes.tensorrt import TensorRTRuntime

    manifest = read_manifest(hip_screen_engine)
    images = np.random.default_rng(7).normal(size=(5, 1, 64, 64)).astype(np.float32)
    with OnnxRuntime(manifest, hip_screen_engine) as onnx:
        expected = onnx.infer({"image": images})
    cache = tmp_path / "plans"
    # max_batch 2: a batch of 5 runs as 2 + 2 + 1 through the profile.
    with TensorRTRuntime(manifest, hip_screen_engine, plan_cache=cache, max_batch=2) as trt:
        got = trt.infer({"image": images})
        single = trt.infer({"image": images[:1]})
    plans = list(cache.glob("*.plan"))
    assert len(plans) == 1 and not list(cache.glob("*.tmp"))
    built_at = plans[0].stat().st_mtime_ns
    for name, value in expected.items():
        assert got[name].shape == value.shape and got[name].dtype == np.float32
        scale = float(np.abs(value).max())
        np.testing.assert_allclose(got[name], value, rtol=2e-2, atol=2e-2 * scale)
    np.testing.assert_allclose(single["logits"], got["logits"][:1], rtol=1e-2, atol=1e-2)
    # A second open reuses the cached plan instead of rebuilding it.
    with TensorRTRuntime(manifest, hip_screen_engine, plan_cache=cache, max_batch=2) as again:
        np.testing.assert_allclose(
            again.infer({"image": images})["logits"], got["logits"], atol=1e-5
        )
    assert [p.stat().st_mtime_ns for p in cache.glob("*.plan")] == [built_at]
