"""Stand-ins for the parts of TensorRT's and pycuda's APIs that TensorRTRuntime uses.

Neither can be installed on the machines the tests run on. The stand-in TensorRT runs a
trivial "network" on the host (:func:`network_outputs`: easy to predict, distinct per
sample) and reads and writes the runtime's GPU buffers through its :class:`Stand`: the
stand-in pycuda's host arrays in test_tensorrt_flow.py, a real GPU's memory through the real
pycuda in test_tensorrt_pycuda.py.
"""

from __future__ import annotations

import importlib.machinery
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_SHAPES = {"logits": (8,), "features": (2048, 2, 2)}
STRONGLY_TYPED = 1  # the enum's value in TensorRT 10


def network_outputs(images: np.ndarray) -> dict[str, np.ndarray]:
    """What the stand-in engine computes: easy to predict, distinct per sample."""
    means = images.reshape(len(images), -1).mean(axis=1)
    return {
        "logits": means[:, None] * np.arange(8, dtype=np.float32),
        "features": np.broadcast_to(means[:, None, None, None], (len(images), 2048, 2, 2)),
    }


class Stand:
    """State shared by the stand-in modules, for the assertions."""

    def __init__(self) -> None:
        self.context_stack: list[object] = []
        self.builds = 0
        self.executions: list[int] = []  # batch size of each execute_async_v3
        self.device: dict[int, DeviceAllocation] = {}
        self.host_freed = 0
        self.parse_ok = True
        self.parsed: list[str] = []  # the ONNX files the parser read
        self.unresolved: str | None = None  # a tensor whose shape TensorRT leaves at -1
        self.plan_outputs = dict(OUTPUT_SHAPES)  # the plan's outputs (without the batch)
        self.plan_inputs = {"image": (1, 64, 64)}  # its inputs: fixed, as exported (no batch)
        self.contexts_destroyed = 0
        self.contexts_leaked = 0  # detached where pycuda cannot destroy them
        self.syncs = 0

    # What the stand-in TensorRT asks of the GPU; RealGpuStand answers through pycuda.

    def in_context(self) -> bool:
        """Whether a CUDA context is current (TensorRT calls need one)."""
        return bool(self.context_stack)

    def read_device(self, address: int, nbytes: int) -> np.ndarray:
        """``nbytes`` bytes of device memory at ``address``, once queued work is done."""
        return self.device[address].data[:nbytes].copy()

    def write_device(self, address: int, raw: np.ndarray) -> None:
        """Write the bytes ``raw`` to device memory at ``address``."""
        self.device[address].data[: raw.size] = raw


class DeviceAllocation:
    def __init__(self, stand: Stand, nbytes: int) -> None:
        self.stand, self.data, self.freed = stand, np.zeros(nbytes, np.uint8), False
        stand.device[id(self)] = self

    def __int__(self) -> int:
        return id(self)

    def free(self) -> None:
        assert self.stand.context_stack, "device memory freed outside a CUDA context"
        self.freed = True


def cuda_module(stand: Stand) -> types.ModuleType:
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

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        in_context()
        return DeviceAllocation(stand, nbytes)

    def memcpy_htod_async(device: DeviceAllocation, host: np.ndarray, stream: Stream) -> None:
        in_context()
        raw = host.view(np.uint8)
        device.data[: raw.size] = raw

    def memcpy_dtoh_async(host: np.ndarray, device: DeviceAllocation, stream: Stream) -> None:
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


def trt_module(stand: Stand) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0-standin"  # type: ignore[attr-defined]
    # As an installed module has: importlib.util.find_spec("tensorrt") reads it.
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
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
            assert stand.in_context(), "built outside a CUDA context"
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
            assert stand.in_context(), "executed outside a CUDA context"
            shape = self.shapes["image"]
            raw = stand.read_device(self.addresses["image"], int(np.prod(shape)) * 4)
            images = raw.view(np.float32).reshape(shape)
            stand.executions.append(shape[0])
            for name, value in network_outputs(images).items():
                out = np.ascontiguousarray(value, np.float32).view(np.uint8).ravel()
                stand.write_device(self.addresses[name], out)
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
            # The plan's own shapes, the dynamic batch -1, as TensorRT gives them (the ONNX
            # fixes every other dimension, which TensorRT reports as it is).
            shapes = {**stand.plan_inputs, **stand.plan_outputs}
            return (-1, *shapes[name])

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
