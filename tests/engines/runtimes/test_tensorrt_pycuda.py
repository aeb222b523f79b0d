"""TensorRTRuntime's CUDA side on a real GPU: the real pycuda under the stand-in TensorRT.

Where pycuda and a GPU are present but TensorRT is not (TensorRT's libraries come from
NVIDIA's own package index, out of reach of some GPU machines), these tests still run every
pycuda call the runtime makes on the real driver: its own context pushed and popped around
each call, page-locked and device buffers, asynchronous copies on its stream, the context
destroyed on close from another thread. tensorrt_standin's TensorRT computes its trivial
network on the host from the real device memory. With TensorRT installed as well, the
parity test in test_tensorrt.py runs the whole runtime.
"""

from __future__ import annotations

import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tensorrt_standin import Stand, network_outputs, trt_module

from engines.manifest import read_manifest
from engines.runtimes import EngineRuntimeError
from engines.runtimes.tensorrt import TensorRTRuntime, cuda_device_count

pytestmark = pytest.mark.cuda
cuda = pytest.importorskip("pycuda.driver", reason="needs pycuda (the gpu extra)")
MIB = 1 << 20


class RealGpuStand(Stand):
    """The stand-in TensorRT's view of a real GPU, through pycuda."""

    def in_context(self) -> bool:
        return cuda.Context.get_current() is not None

    def read_device(self, address: int, nbytes: int) -> np.ndarray:
        # The runtime queued its input copies on its stream: wait for them, as TensorRT's
        # kernels on that stream would.
        cuda.Context.synchronize()
        raw = np.empty(nbytes, np.uint8)
        cuda.memcpy_dtoh(raw, address)
        return raw

    def write_device(self, address: int, raw: np.ndarray) -> None:
        cuda.memcpy_htod(address, np.ascontiguousarray(raw))


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> RealGpuStand:
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as exc:
        pytest.skip(f"no CUDA driver: {exc}")
    if count == 0:
        pytest.skip("no CUDA device")
    state = RealGpuStand()
    monkeypatch.setitem(sys.modules, "tensorrt", trt_module(state))
    return state


def _free_gpu_memory() -> int:
    """Free memory on GPU 0, read through a context of its own that is destroyed after."""
    context = cuda.Device(0).make_context()
    try:
        free, _total = cuda.mem_get_info()
    finally:
        context.detach()
    return int(free)


def test_cuda_device_count_sees_the_gpu(gpu: RealGpuStand) -> None:
    assert cuda_device_count() == cuda.Device.count() >= 1


def test_buffers_copies_and_context_on_a_real_gpu(
    gpu: RealGpuStand, hip_screen_engine: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(hip_screen_engine)
    images = np.random.default_rng(5).normal(size=(7, 1, 64, 64)).astype(np.float32)
    assert cuda.Context.get_current() is None
    runtime = TensorRTRuntime(manifest, hip_screen_engine, plan_cache=tmp_path, max_batch=3)
    with runtime:
        target = runtime.target
        assert target.gpu_name == cuda.Device(0).name()
        assert re.fullmatch(r"\d+\.\d+", target.compute_capability), target
        assert target.cuda_version == ".".join(str(v) for v in cuda.get_version()[:2])
        assert cuda.Context.get_current() is None, "the runtime left its context current"
        got = runtime.infer({"image": images})
        assert cuda.Context.get_current() is None
        # The node's worker thread infers with a runtime another thread opened.
        with ThreadPoolExecutor(1) as worker:
            single = worker.submit(runtime.infer, {"image": images[4:5]}).result()
    assert gpu.builds == 1 and gpu.executions == [3, 3, 1, 1]
    expected = network_outputs(images)
    for name in ("logits", "features"):
        assert got[name].shape == expected[name].shape and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)
        np.testing.assert_allclose(single[name], expected[name][4:5], rtol=1e-6)
    assert cuda.Context.get_current() is None
    with pytest.raises(EngineRuntimeError, match="runtime is closed"):
        runtime.infer({"image": images})


def test_a_close_from_another_thread_gives_the_gpu_memory_back(
    gpu: RealGpuStand, hip_screen_engine: Path, tmp_path: Path
) -> None:
    # A CUDA context holds hundreds of MiB of the GPU's memory: one left behind by each
    # close from the node's main thread would show in the free memory.
    manifest = read_manifest(hip_screen_engine)
    before = _free_gpu_memory()
    for _ in range(3):
        runtime = TensorRTRuntime(manifest, hip_screen_engine, plan_cache=tmp_path, max_batch=64)
        runtime.infer({"image": np.ones((2, 1, 64, 64), np.float32)})
        held = _free_gpu_memory()
        closer = threading.Thread(target=runtime.close)
        closer.start()
        closer.join()
        assert before - held > 16 * MIB, "the measure does not see an open runtime"
    after = _free_gpu_memory()
    assert before - after < 16 * MIB, f"{(before - after) / MIB:.0f} MiB not given back"
    assert cuda.Context.get_current() is None
