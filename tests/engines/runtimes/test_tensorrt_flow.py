"""TensorRTRuntime's own logic (build, plan cache, chunking, release) on stand-in modules.

TensorRT and pycuda cannot be installed on these machines, so minimal stand-ins for the
parts of their APIs the runtime uses run a trivial "network" on the host. They check our
control flow: what is built and cached when, how batches are split over the profile, that
every CUDA call happens inside our context and everything is freed on close. The real APIs
are exercised by the gpu-marked parity test in test_tensorrt.py.
"""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from races import ClosingBatch

from engines.manifest import read_manifest
from engines.runtimes import EngineRuntimeError
from engines.runtimes.tensorrt import PlanTarget, TensorRTRuntime, plan_cache_key

OUTPUT_SHAPES = {"logits": (8,), "features": (2048, 2, 2)}
STRONGLY_TYPED = 1  # the enum's value in TensorRT 10


def _network(images: np.ndarray) -> dict[str, np.ndarray]:
    """What the stand-in engine computes: easy to predict, distinct per sample."""
    means = images.reshape(len(images), -1).mean(axis=1)
    return {
        "logits": means[:, None] * np.arange(8, dtype=np.float32),
        "features": np.broadcast_to(means[:, None, None, None], (len(images), 2048, 2, 2)),
    }


class _Stand:
    """State shared by the stand-in modules, for the assertions."""

    def __init__(self) -> None:
        self.context_stack: list[object] = []
        self.builds = 0
        self.executions: list[int] = []  # batch size of each execute_async_v3
        self.device: dict[int, _DeviceAllocation] = {}
        self.host_freed = 0
        self.parse_ok = True
        self.parsed: list[str] = []  # the ONNX files the parser read
        self.unresolved: str | None = None  # a tensor whose shape TensorRT leaves at -1
        self.plan_outputs = dict(OUTPUT_SHAPES)  # the plan's outputs (without the batch)
        self.contexts_destroyed = 0
        self.contexts_leaked = 0  # detached where pycuda cannot destroy them
        self.syncs = 0


class _DeviceAllocation:
    def __init__(self, stand: _Stand, nbytes: int) -> None:
        self.stand, self.data, self.freed = stand, np.zeros(nbytes, np.uint8), False
        stand.device[id(self)] = self

    def __int__(self) -> int:
        return id(self)

    def free(self) -> None:
        assert self.stand.context_stack, "device memory freed outside a CUDA context"
        self.freed = True


def _cuda_module(stand: _Stand) -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class HostAllocation(np.ndarray):
        def free(self) -> None:
            stand.host_freed += 1

    class Context:
        thread = 0  # the thread that made it (make_context)

        def push(self) -> None:
            stand.context_stack.append(self)

        @staticmethod
        def pop() -> None:
            if not stand.context_stack:
                raise Error("no context to pop")
            stand.context_stack.pop()

        def detach(self) -> None:
            # pycuda: a current context is destroyed (and popped) on any thread; one that is
            # not current only on the thread that made it, else it is left behind.
            if stand.context_stack and stand.context_stack[-1] is self:
                stand.context_stack.pop()
                stand.contexts_destroyed += 1
            elif threading.get_ident() == self.thread:
                stand.contexts_destroyed += 1
            else:
                stand.contexts_leaked += 1

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Stand-in GPU"

        def compute_capability(self) -> tuple[int, int]:
            return (9, 0)

        def make_context(self) -> Context:
            context = Context()
            context.thread = threading.get_ident()
            context.push()
            return context

    class Stream:
        handle = 1234

        def synchronize(self) -> None:
            stand.syncs += 1

    def in_context() -> None:
        if not stand.context_stack:
            raise Error("CUDA call outside a context")

    def get_version() -> tuple[int, int, int]:
        return (12, 4, 0)

    def pagelocked_empty(count: int, dtype: Any) -> np.ndarray:
        in_context()
        # Like pycuda: a plain array whose base is the allocation that can be freed.
        return HostAllocation((count,), dtype).view(np.ndarray)

    def mem_alloc(nbytes: int) -> _DeviceAllocation:
        in_context()
        return _DeviceAllocation(stand, nbytes)

    def memcpy_htod_async(device: _DeviceAllocation, host: np.ndarray, stream: Stream) -> None:
        in_context()
        raw = host.view(np.uint8)
        device.data[: raw.size] = raw

    def memcpy_dtoh_async(host: np.ndarray, device: _DeviceAllocation, stream: Stream) -> None:
        in_context()
        raw = host.view(np.uint8)
        raw[:] = device.data[: raw.size]

    for name, value in {
        "Error": Error,
        "Context": Context,
        "Device": Device,
        "Stream": Stream,
        "init": lambda: None,
        "get_version": get_version,
        "pagelocked_empty": pagelocked_empty,
        "mem_alloc": mem_alloc,
        "memcpy_htod_async": memcpy_htod_async,
        "memcpy_dtoh_async": memcpy_dtoh_async,
    }.items():
        setattr(cuda, name, value)
    return cuda


def _trt_module(stand: _Stand) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0-standin"  # type: ignore[attr-defined]
    names = types.SimpleNamespace

    class ILogger:
        Severity = names(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    class Parser:
        def __init__(self, network: object, logger: ILogger) -> None:
            self.num_errors = 0 if stand.parse_ok else 1

        def parse_from_file(self, path: str) -> bool:
            assert Path(path).is_file()
            stand.parsed.append(Path(path).name)
            return stand.parse_ok

        def get_error(self, index: int) -> str:
            return "In node 3 (Conv): unsupported padding"

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, ...]] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            self.shapes[name] = (low, opt, high)

    class Config:
        def __init__(self) -> None:
            self.flags: list[str] = []
            self.profiles: list[Profile] = []

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            assert pool == "WORKSPACE" and size > 0

        def set_flag(self, flag: str) -> None:
            self.flags.append(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return 0

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            pass

        def create_network(self, flags: int) -> object:
            assert flags == 1 << STRONGLY_TYPED, "not a strongly typed network"
            return object()

        create_builder_config = Config
        create_optimization_profile = Profile

        def build_serialized_network(self, network: object, config: Config) -> bytes:
            assert stand.context_stack, "built outside a CUDA context"
            assert config.flags == [], "precision comes from the fp16 ONNX, not builder flags"
            ((low, opt, high),) = (p.shapes["image"] for p in config.profiles)
            stand.builds += 1
            return f"plan {low[0]} {opt[0]} {high[0]}".encode()

    class Context:
        def __init__(self, max_batch: int) -> None:
            self.max_batch = max_batch
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes[name] = tuple(shape)
            return name == "image" and 1 <= shape[0] <= self.max_batch

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            batch = -1 if name == stand.unresolved else self.shapes["image"][0]
            return self.shapes["image"] if name == "image" else (batch, *OUTPUT_SHAPES[name])

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream: int) -> bool:
            assert stand.context_stack, "executed outside a CUDA context"
            shape = self.shapes["image"]
            raw = stand.device[self.addresses["image"]].data
            images = raw[: int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
            stand.executions.append(shape[0])
            for name, value in _network(images).items():
                out = np.ascontiguousarray(value, np.float32).view(np.uint8).ravel()
                stand.device[self.addresses[name]].data[: out.size] = out
            return True

    class Engine:
        num_io_tensors = 3

        def __init__(self, max_batch: int) -> None:
            self.max_batch = max_batch

        def get_tensor_name(self, index: int) -> str:
            return ("image", "logits", "features")[index]

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if name == "image" else "OUTPUT"

        def get_tensor_dtype(self, name: str) -> Any:
            return names(name="FLOAT")

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            # The plan's own shapes, dynamic dimensions -1, as TensorRT gives them.
            return (-1, 1, -1, -1) if name == "image" else (-1, *stand.plan_outputs[name])

        def create_execution_context(self) -> Context:
            return Context(self.max_batch)

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            if not plan.startswith(b"plan "):
                return None
            return Engine(int(plan.split()[-1]))

    for name, value in {
        "ILogger": ILogger,
        "Builder": Builder,
        "OnnxParser": Parser,
        "Runtime": Runtime,
        "MemoryPoolType": names(WORKSPACE="WORKSPACE"),
        "NetworkDefinitionCreationFlag": names(STRONGLY_TYPED=STRONGLY_TYPED),
        "TensorIOMode": names(INPUT="INPUT", OUTPUT="OUTPUT"),
    }.items():
        setattr(trt, name, value)
    return trt


@pytest.fixture
def stand(monkeypatch: pytest.MonkeyPatch) -> _Stand:
    state = _Stand()
    cuda = _cuda_module(state)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", _trt_module(state))
    return state


def test_builds_once_caches_and_splits_batches(
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path
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
    expected = _network(images)
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


def test_parser_errors_are_listed(stand: _Stand, hip_screen_engine: Path, tmp_path: Path) -> None:
    stand.parse_ok = False
    with pytest.raises(
        EngineRuntimeError, match=r"cannot parse .*model-fp16\.onnx: In node 3 \(Conv\)"
    ):
        TensorRTRuntime(read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path)
    assert not stand.context_stack and not list(tmp_path.glob("*.plan"))


def test_corrupt_cached_plan_is_named(
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path
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
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path, device: int
) -> None:
    with pytest.raises(
        EngineRuntimeError, match=rf"^tensorrt device: expected 0\.\.0, got {device}$"
    ):
        TensorRTRuntime(
            read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path, device=device
        )
    assert not stand.context_stack and not list(tmp_path.glob("*.plan"))


def test_unresolved_output_shape_is_refused(
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path
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


def test_a_plan_whose_outputs_differ_from_the_manifest_is_refused(
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path
) -> None:
    # As onnxruntime refuses it at open: heat maps of another grid (or logits of another
    # class list) were returned as if they matched the manifest.
    stand.plan_outputs["features"] = (2048, 3, 3)
    with pytest.raises(
        EngineRuntimeError,
        match=r"^hip_screen on tensorrt: output 'features' is \[-1, 2048, 3, 3\] in the model, "
        r"the manifest says \[-1, 2048, 2, 2\] \(-1 = any\)$",
    ):
        TensorRTRuntime(read_manifest(hip_screen_engine), hip_screen_engine, plan_cache=tmp_path)
    assert not stand.context_stack


def test_cuda_errors_name_the_failing_step(
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda = sys.modules["pycuda.driver"]
    allocate = cuda.mem_alloc
    calls: list[int] = []

    def out_of_memory(nbytes: int) -> _DeviceAllocation:
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
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path
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
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
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
    stand: _Stand, hip_screen_engine: Path, tmp_path: Path
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
