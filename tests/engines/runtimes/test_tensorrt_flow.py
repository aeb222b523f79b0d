"""TensorRTRuntime's own logic (build, plan cache, chunking, release) on stand-in modules.

TensorRT and pycuda cannot be installed on these machines, so tensorrt_standin's minimal
stand-ins for the parts of their APIs the runtime uses run a trivial "network" on the host.
They check our control flow: what is built and cached when, how batches are split over the
profile, that every CUDA call happens inside our context and everything is freed on close.
test_tensorrt_pycuda.py runs the same stand-in TensorRT over the real pycuda on a GPU; the
gpu-marked parity test in test_tensorrt.py runs the real TensorRT.
"""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from races import ClosingBatch
from tensorrt_standin import DeviceAllocation, Stand, cuda_module, network_outputs, trt_module

from engines.manifest import read_manifest
from engines.runtimes import EngineRuntimeError
from engines.runtimes.tensorrt import PlanTarget, TensorRTRuntime, plan_cache_key


@pytest.fixture
def stand(monkeypatch: pytest.MonkeyPatch) -> Stand:
    state = Stand()
    cuda = cuda_module(state)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt_module(state))
    return state


def test_builds_once_caches_and_splits_batches(
    stand: Stand, hip_screen_engine: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(hip_screen_engine)
    cache = tmp_path / "plans"
    images = np.random.default_rng(3).normal(size=(7, 1, 64, 64)).astype(np.float32)
    runtime = TensorRTRuntime(manifest, hip_screen_engine, plan_cache=cache, max_batch=3)
    with runtime:
        assert not stand.context_stack, "the runtime left its CUDA context current"
        got = runtime.infer({"image": images})
        assert not stand.context_stack
    assert stand.builds == 1 and stand.executions == [3, 3, 1]
    assert stand.parsed == ["model-fp16.onnx"]  # the mixed-precision ONNX, strongly typed
    expected = network_outputs(images)
    for name in ("logits", "features"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)
    (plan,) = cache.glob("*.plan")
    assert plan.read_bytes() == b"plan 1 3 3" and plan == runtime.plan_path
    # Closed: every buffer freed inside the context, the context popped.
    assert all(d.freed for d in stand.device.values()) and stand.host_freed == 3
    assert not stand.context_stack
    with pytest.raises(EngineRuntimeError, match="runtime is closed"):
        runtime.infer({"image": images})
    # Same ONNX, TensorRT, GPU and profile: the cached plan, no second build.
    with TensorRTRuntime(manifest, hip_screen_engine, plan_cache=cache, max_batch=3) as again:
        np.testing.assert_allclose(again.infer({"image": images[:2]})["logits"], got["logits"][:2])
    assert stand.builds == 1
    # The plan's key is the fp16 ONNX's: re-exporting it (a changed file) makes a new plan.
    target = PlanTarget("10.0.0-standin", "Stand-in GPU", "9.0", "12.4")
    assert runtime.target == target
    assert runtime.plan_path.name.startswith(
        plan_cache_key(manifest.artefacts["onnx_fp16"].sha256, target, 3, 3, 1 << 30)
    )
    # Another profile is another plan.
    TensorRTRuntime(manifest, hip_screen_engine, plan_cache=cache, max_batch=4, opt_batch=2).close()
    assert stand.builds == 2 and len(list(cache.glob("*.plan"))) == 2


def test_parser_errors_are_listed(stand: Stand, hip_screen_engine: Path, tmp_path: Path) -> None:
    stand.parse_ok = False
    with pytest.raises(
        EngineRuntimeError, match=r"cannot parse .*model-fp16\.onnx: In node 3 \(Conv\)"
    ):
        TensorRTRuntime(read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path)
    assert not stand.context_stack and not list(tmp_path.glob("*.plan"))


def test_corrupt_cached_plan_is_named(
    stand: Stand, hip_screen_engine: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(hip_screen_engine)
    TensorRTRuntime(manifest, hip_screen_engine, plan_cache=tmp_path).close()
    (plan,) = tmp_path.glob("*.plan")
    plan.write_bytes(b"garbage")
    with pytest.raises(
        EngineRuntimeError, match=rf"deserialize_cuda_engine returned None .*{plan.name}"
    ):
        TensorRTRuntime(manifest, hip_screen_engine, plan_cache=tmp_path)
    assert not stand.context_stack


@pytest.mark.parametrize("device", [1, -1])
def test_absent_cuda_device_is_refused(
    stand: Stand, hip_screen_engine: Path, tmp_path: Path, device: int
) -> None:
    with pytest.raises(
        EngineRuntimeError, match=rf"^tensorrt device: expected 0\.\.0, got {device}$"
    ):
        TensorRTRuntime(
            read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path, device=device
        )
    assert not stand.context_stack and not list(tmp_path.glob("*.plan"))


def test_unresolved_output_shape_is_refused(
    stand: Stand, hip_screen_engine: Path, tmp_path: Path
) -> None:
    stand.unresolved = "features"
    with pytest.raises(
        EngineRuntimeError,
        match=r"^hip_screen: features has an unresolved shape \(-1, 2048, 2, 2\)$",
    ):
        TensorRTRuntime(read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path)
    # What was allocated before the refusal is freed, inside the context, which is popped.
    assert stand.device and all(d.freed for d in stand.device.values())
    assert not stand.context_stack


@pytest.mark.parametrize(
    ("kind", "name", "shape", "message"),
    [
        # As onnxruntime refuses it at open: heat maps of another grid (or logits of another
        # class list) were returned as if they matched the manifest.
        ("outputs", "features", (2048, 3, 3),
         r"output 'features' is \[-1, 2048, 3, 3\] in the model, the manifest says "
         r"\[-1, 2048, 2, 2\]"),
        # The stand-in reported -1 for height and width, which check_signature takes as
        # "any": a manifest of another input size than the plan's opened.
        ("inputs", "image", (1, 96, 96),
         r"input 'image' is \[-1, 1, 96, 96\] in the model, the manifest says \[-1, 1, 64, 64\]"),
    ],
)  # fmt: skip
def test_a_plan_whose_tensors_differ_from_the_manifest_is_refused(
    stand: Stand,
    hip_screen_engine: Path,
    tmp_path: Path,
    kind: str,
    name: str,
    shape: tuple[int, ...],
    message: str,
) -> None:
    (stand.plan_inputs if kind == "inputs" else stand.plan_outputs)[name] = shape
    with pytest.raises(
        EngineRuntimeError, match=rf"^hip_screen on tensorrt: {message} \(-1 = any\)$"
    ):
        TensorRTRuntime(read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path)
    assert not stand.context_stack


def test_cuda_errors_name_the_failing_step(
    stand: Stand, hip_screen_engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda = sys.modules["pycuda.driver"]
    allocate = cuda.mem_alloc
    calls: list[int] = []

    def out_of_memory(nbytes: int) -> DeviceAllocation:
        calls.append(nbytes)
        if len(calls) == 2:  # the second tensor (logits) does not fit
            raise cuda.Error("cuMemAlloc failed: out of memory")
        return allocate(nbytes)

    monkeypatch.setattr(cuda, "mem_alloc", out_of_memory)
    with pytest.raises(
        EngineRuntimeError,
        match=r"^hip_screen: CUDA error allocating GPU logits: cuMemAlloc failed: out of memory$",
    ):
        TensorRTRuntime(read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path)
    assert len(stand.device) == 1 and all(d.freed for d in stand.device.values())
    assert stand.host_freed == 2  # the first tensor's and the one whose GPU buffer failed
    assert not stand.context_stack and stand.contexts_destroyed == 1


def test_a_close_from_another_thread_destroys_the_context(
    stand: Stand, hip_screen_engine: Path, tmp_path: Path
) -> None:
    runtime = TensorRTRuntime(
        read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path
    )
    closer = threading.Thread(target=runtime.close)  # a stop, from the node's main thread
    closer.start()
    closer.join()
    assert (stand.contexts_destroyed, stand.contexts_leaked) == (1, 0)
    assert not stand.context_stack


def test_a_failed_chunk_waits_for_the_copies_it_queued(
    stand: Stand, hip_screen_engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = TensorRTRuntime(
        read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path
    )
    cuda = sys.modules["pycuda.driver"]

    def fails(*args: object) -> None:
        raise cuda.Error("cuMemcpyDtoHAsync failed: an illegal memory access")

    monkeypatch.setattr(cuda, "memcpy_dtoh_async", fails)
    before = stand.syncs
    with pytest.raises(EngineRuntimeError, match=r"CUDA error copying \w+ from the GPU"):
        runtime.infer({"image": np.zeros((2, 1, 64, 64), np.float32)})
    assert stand.syncs == before + 1  # the input copy queued before the failure is waited for
    runtime.close()


def test_a_plan_that_cannot_be_cached_is_used_and_said_so(
    stand: Stand, hip_screen_engine: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    cache.write_text("a file where the plan cache should be")  # the folder cannot be made
    with TensorRTRuntime(
        read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=cache
    ) as runtime:
        out = runtime.infer({"image": np.zeros((2, 1, 64, 64), np.float32)})
    assert out["logits"].shape == (2, 8) and stand.builds == 1
    assert "TensorRT plan not cached at" in caplog.text and "built again" in caplog.text


def test_closed_by_another_thread_while_waiting(
    stand: Stand, hip_screen_engine: Path, tmp_path: Path
) -> None:
    runtime = TensorRTRuntime(
        read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path
    )
    images = np.zeros((2, 1, 64, 64), np.float32)
    with pytest.raises(
        EngineRuntimeError, match=r"^hip_screen on tensorrt: runtime is closed$"
    ) as info:
        runtime.infer(ClosingBatch(runtime, images))
    assert info.traceback[-1].name == "_run"  # the locked check, not infer's
    assert stand.executions == [] and not stand.context_stack
