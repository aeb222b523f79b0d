"""TensorRT 10 and 11 on an NVIDIA GPU: the production backend.

The engine is built from the manifest's fp16 ONNX (its SHA-256 checked first) as a strongly
typed network, with one optimisation profile over the dynamic batch axis (1 .. ``max_batch``,
tuned for ``opt_batch``). That ONNX already says which tensor has which precision: fp16
throughout, with fp32 inputs and outputs and GeM's clip/pow/mean/root, softmax and sigmoid
kept in fp32 (``engines.export``; x**3 of feature values overflows half precision), joined
by Cast nodes. A strongly typed network follows those types exactly. The older way,
TensorRT's FP16 builder flag over the fp32 ONNX ("weak typing"), left TensorRT free to run
any layer in fp16, GeM's power included; it is deprecated since TensorRT 10.12 and gone in 11,
where every network is strongly typed (the creation flag is accepted and ignored there).

A plan only runs on the TensorRT version and GPU model that built it, and building takes
minutes, so the serialized plan is cached in ``plan_cache`` under a key of
everything it depends on (:func:`plan_cache_key`) and written atomically, so a crash mid-write
never leaves a plan that a later start would trust.

CUDA is driven through pycuda without ``pycuda.autoinit``: the runtime creates its own
context, pushes it around every call and pops it after, so it neither leaks a current
context into the caller's thread nor depends on import order; device memory is freed in
:meth:`close`, never in ``__del__`` (finalisers run at arbitrary times, possibly without the
context). ``tensorrt`` and ``pycuda`` are imported inside functions only: this module
imports (and its pure helpers run) without the ``gpu`` extra.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from engines.manifest import Manifest, TensorSpec, verify_artefacts
from engines.runtimes.base import Array, EngineRuntimeError, Runtime, check_signature

DEFAULT_MAX_BATCH = 8
DEFAULT_WORKSPACE_BYTES = 1 << 30
PLAN_SUFFIX = ".plan"
# The manifest artefact a plan is built from: the mixed-precision fp16 ONNX (see above).
PLAN_SOURCE = "onnx_fp16"

# TensorRT DataType names -> numpy. BF16 / FP8 / INT4 have no numpy dtype and never appear at
# the I/O of an engine built from our ONNX (fp32 inputs and outputs, fp16 inside), so they are
# refused rather than guessed.
_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}

log = logging.getLogger(__name__)
T = TypeVar("T")


# --- pure helpers (no GPU; unit-tested everywhere) ------------------------------------------


# How this module builds a plan (strongly typed network from the fp16 ONNX, one batch
# profile, the workspace limit): a change to the recipe must not reuse older plans.
PLAN_RECIPE = "strongly-typed-fp16-onnx/1"


@dataclass(frozen=True)
class PlanTarget:
    """What a serialized plan is bound to besides its ONNX: TensorRT, the GPU, CUDA."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # e.g. "9.0"
    cuda_version: str  # the CUDA pycuda was built against, e.g. "12.4"


def plan_cache_key(
    onnx_sha256: str, target: PlanTarget, max_batch: int, opt_batch: int, workspace_bytes: int
) -> str:
    """The plan's cache key: SHA-256 over everything a serialized plan depends on.

    The optimisation batch is included with the maximum because both are baked into the
    profile; the GPU's compute capability and the CUDA version with its name, since one name
    can cover boards a plan does not move between; fields are joined with a separator so
    ("1", "23") and ("12", "3") differ.
    """
    fields = (
        PLAN_RECIPE, onnx_sha256, target.tensorrt_version, target.gpu_name,
        target.compute_capability, target.cuda_version, str(max_batch), str(opt_batch),
        str(workspace_bytes),
    )  # fmt: skip
    return hashlib.sha256("\n".join(fields).encode("utf-8")).hexdigest()


def plan_path(plan_cache: Path, key: str) -> Path:
    return plan_cache / f"{key}{PLAN_SUFFIX}"


def check_batch_limits(max_batch: int, opt_batch: int | None) -> int:
    """``opt_batch`` (default: ``max_batch``) after checking 1 <= opt <= max."""
    if max_batch < 1:
        raise EngineRuntimeError(f"tensorrt max_batch: expected 1 or more, got {max_batch}")
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise EngineRuntimeError(
            f"tensorrt opt_batch: expected 1..{max_batch} (max_batch), got {opt}"
        )
    return opt


def profile_shapes(
    spec: TensorSpec, opt_batch: int, max_batch: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of one input for the optimisation profile: batch 1, opt, max."""
    if not spec.shape or spec.shape[0] != -1:
        raise EngineRuntimeError(
            f"{spec.name}: expected a dynamic batch axis first (-1), got shape {list(spec.shape)}"
        )
    rest = spec.shape[1:]
    if any(d < 1 for d in rest):
        raise EngineRuntimeError(
            f"{spec.name}: only the batch axis may be dynamic, got shape {list(spec.shape)}"
        )
    return (1, *rest), (opt_batch, *rest), (max_batch, *rest)


def numpy_dtype(tensorrt_dtype_name: str) -> np.dtype[Any]:
    """The numpy dtype of a TensorRT ``DataType`` given by name (``DataType.FLOAT.name``)."""
    try:
        return _NUMPY_DTYPES[tensorrt_dtype_name]
    except KeyError:
        raise EngineRuntimeError(
            f"tensorrt: I/O data type {tensorrt_dtype_name!r} is not supported "
            f"(supported: {', '.join(_NUMPY_DTYPES)})"
        ) from None


def batch_slices(size: int, max_batch: int) -> list[slice]:
    """Split a batch into runs of at most ``max_batch`` (the profile's upper bound)."""
    return [slice(start, min(start + max_batch, size)) for start in range(0, size, max_batch)]


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write via a temporary file in the same folder and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- GPU code ---------------------------------------------------------------------------------


def cuda_device_count() -> int:
    """CUDA devices pycuda sees; 0 (never an error) without tensorrt, pycuda, a driver or a GPU."""
    if importlib.util.find_spec("tensorrt") is None:
        return 0
    try:
        # pycuda.driver links libcuda: without a driver the import itself fails.
        import pycuda.driver as cuda
    except (ImportError, OSError) as exc:
        log.debug("no CUDA driver for pycuda: %s", exc)
        return 0
    try:
        cuda.init()
        return int(cuda.Device.count())
    except cuda.Error as exc:
        log.debug("no CUDA device: %s", exc)
        return 0


def _import_gpu() -> tuple[Any, Any]:
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise EngineRuntimeError(
            f"the tensorrt backend needs the gpu extra (tensorrt, pycuda): {exc}"
        ) from exc
    return trt, cuda


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to logging and keeps the errors for our exceptions."""
    severity = trt.ILogger.Severity

    class _Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(msg)
                log.error("tensorrt: %s", msg)
            elif level == severity.WARNING:
                log.warning("tensorrt: %s", msg)
            else:
                log.debug("tensorrt: %s", msg)

    return _Logger()


@dataclass
class _Binding:
    """One I/O tensor: page-locked host and device buffers sized for the largest batch."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    host: Any  # page-locked 1-D numpy array (pycuda.driver.pagelocked_empty)
    device: Any  # pycuda.driver.DeviceAllocation


class TensorRTRuntime(Runtime):
    backend = "tensorrt"

    def __init__(
        self,
        manifest: Manifest,
        folder: Path,
        plan_cache: Path,
        max_batch: int = DEFAULT_MAX_BATCH,
        opt_batch: int | None = None,
        device: int = 0,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    ) -> None:
        super().__init__(manifest, folder)
        self.max_batch = max_batch
        self.workspace_bytes = workspace_bytes
        self.opt_batch = check_batch_limits(max_batch, opt_batch)
        for spec in manifest.inputs:
            profile_shapes(spec, self.opt_batch, max_batch)  # refuse what no profile can cover
        verify_artefacts(manifest, folder, (PLAN_SOURCE,))
        self._trt, self._cuda = _import_gpu()
        self._logger = _make_logger(self._trt)
        self._bindings: list[_Binding] = []
        self._cuda_context: Any = None
        self._trt_runtime: Any = None  # must outlive the engine it deserialized
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self.plan_path: Path | None = None
        # One execution context and one set of buffers: concurrent callers take turns.
        self._lock = threading.Lock()
        cuda = self._cuda
        self._check(cuda.init, "initialising CUDA")
        count = self._check(cuda.Device.count, "counting CUDA devices")
        if not 0 <= device < count:
            raise EngineRuntimeError(f"tensorrt device: expected 0..{count - 1}, got {device}")
        gpu = self._check(lambda: cuda.Device(device), f"opening CUDA device {device}")
        self.gpu_name = str(self._check(gpu.name, "reading the GPU name"))
        major, minor = self._check(gpu.compute_capability, "reading the compute capability")
        cuda_version = self._check(cuda.get_version, "reading the CUDA version")
        self.target = PlanTarget(
            str(self._trt.__version__), self.gpu_name, f"{major}.{minor}",
            ".".join(str(v) for v in cuda_version[:2]),
        )  # fmt: skip
        # make_context() leaves the new context current; pop it at once so every later call
        # pushes and pops it explicitly (see _active).
        self._cuda_context = self._check(gpu.make_context, "creating a CUDA context")
        try:
            self._check(cuda.Context.pop, "releasing the CUDA context")
            with self._active():
                plan = self._load_or_build(plan_cache)
                self._open_engine(plan)
        except BaseException:
            self._release()
            raise

    # -- building and caching --------------------------------------------------------------

    def _load_or_build(self, plan_cache: Path) -> bytes:
        trt = self._trt
        key = plan_cache_key(
            self.manifest.artefacts[PLAN_SOURCE].sha256,
            self.target,
            self.max_batch,
            self.opt_batch,
            self.workspace_bytes,
        )
        path = plan_path(plan_cache, key)
        self.plan_path = path
        self._logger.errors.clear()  # _failure must not quote an earlier failure's errors
        if path.is_file():
            log.info("%s: TensorRT plan from cache %s", self.manifest.name, path)
            return path.read_bytes()
        onnx = self.manifest.artefact_path(self.folder, PLAN_SOURCE)
        log.info(
            "%s: building a strongly typed TensorRT %s plan for %s from %s (batch 1..%d, opt %d)",
            self.manifest.name,
            trt.__version__,
            self.gpu_name,
            onnx,
            self.max_batch,
            self.opt_batch,
        )
        plan = self._build(onnx)
        try:
            write_atomic(path, plan)
        except OSError as exc:  # a build of minutes is not thrown away for a full disk
            log.warning(
                "%s: TensorRT plan not cached at %s (%s); it is built again at the next start",
                self.manifest.name, path, exc.strerror or exc,
            )  # fmt: skip
            return plan
        log.info("%s: TensorRT plan cached at %s", self.manifest.name, path)
        return plan

    def _build(self, onnx: Path) -> bytes:
        trt = self._trt
        builder = self._trt_call(lambda: trt.Builder(self._logger), "creating the builder")
        # Explicit batch is implied since TensorRT 10; strong typing is opt-in on 10.x and
        # always on in 11 (where the flag is accepted and ignored).
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = self._trt_call(lambda: builder.create_network(flags), "creating the network")
        parser = self._trt_call(
            lambda: trt.OnnxParser(network, self._logger), "creating the parser"
        )
        if not parser.parse_from_file(str(onnx)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineRuntimeError(
                f"{self.manifest.name}: TensorRT cannot parse {onnx}: "
                + ("; ".join(errors) or "no parser error reported")
            )
        config = self._trt_call(builder.create_builder_config, "creating the builder config")
        # No precision flags: the strongly typed network's precision is the ONNX file's.
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        profile = self._trt_call(builder.create_optimization_profile, "creating the profile")
        for spec in self.manifest.inputs:
            low, opt, high = profile_shapes(spec, self.opt_batch, self.max_batch)
            profile.set_shape(spec.name, low, opt, high)
        if config.add_optimization_profile(profile) < 0:
            raise EngineRuntimeError(self._failure("the optimisation profile is invalid"))
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineRuntimeError(self._failure("build_serialized_network returned None"))
        return bytes(memoryview(serialized))

    # -- engine and buffers ----------------------------------------------------------------

    def _open_engine(self, plan: bytes) -> None:
        trt, cuda = self._trt, self._cuda
        self._trt_runtime = self._trt_call(
            lambda: trt.Runtime(self._logger), "creating the runtime"
        )
        self._engine = self._trt_runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineRuntimeError(
                self._failure(
                    f"deserialize_cuda_engine returned None (corrupt plan? delete {self.plan_path})"
                )
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineRuntimeError(self._failure("create_execution_context returned None"))
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        want_in = sorted(s.name for s in self.input_spec)
        want_out = sorted(s.name for s in self.output_spec)
        outputs = [n for n in names if n not in inputs]
        if sorted(inputs) != want_in or not set(want_out) <= set(outputs):
            raise EngineRuntimeError(
                f"{self.manifest.name}: engine has inputs {sorted(inputs)} and outputs "
                f"{sorted(outputs)}, manifest says {want_in} and {want_out}"
            )
        # Ranks and fixed dimensions too, as onnxruntime checks them (dynamic ones are -1).
        shape = self._engine.get_tensor_shape
        check_signature(
            self.manifest, self.backend,
            {n: tuple(shape(n)) for n in inputs}, {n: tuple(shape(n)) for n in outputs},
        )  # fmt: skip
        # Size every buffer for the largest batch: set the inputs to their max shapes and
        # read the output shapes TensorRT infers from them.
        for spec in self.input_spec:
            self._set_input_shape(spec.name, profile_shapes(spec, 1, self.max_batch)[2])
        self._stream = self._check(cuda.Stream, "creating a CUDA stream")
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineRuntimeError(
                    f"{self.manifest.name}: {name} has an unresolved shape {shape}"
                )
            dtype = numpy_dtype(self._engine.get_tensor_dtype(name).name)
            count = max(1, math.prod(shape))
            host = self._check(
                functools.partial(cuda.pagelocked_empty, count, dtype), f"allocating host {name}"
            )
            try:
                device = self._check(
                    functools.partial(cuda.mem_alloc, count * dtype.itemsize),
                    f"allocating GPU {name}",
                )
            except BaseException:
                host.base.free()  # not yet in _bindings, which _free_all frees
                raise
            self._bindings.append(_Binding(name, name in inputs, dtype, host, device))
            if not self._context.set_tensor_address(name, int(device)):
                raise EngineRuntimeError(self._failure(f"set_tensor_address({name!r}) failed"))

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, shape):
            raise EngineRuntimeError(
                self._failure(f"set_input_shape({name!r}, {list(shape)}) failed")
            )

    # -- inference -------------------------------------------------------------------------

    def _run(self, batch: dict[str, Array]) -> Mapping[str, npt.ArrayLike]:
        size = next(iter(batch.values())).shape[0]
        parts: dict[str, list[Array]] = {spec.name: [] for spec in self.output_spec}
        with self._lock:
            if self._cuda_context is None:  # closed by another thread while this one waited
                raise EngineRuntimeError(f"{self.manifest.name} on tensorrt: runtime is closed")
            with self._active():
                for part in batch_slices(size, self.max_batch):
                    chunk = {n: a[part] for n, a in batch.items()}
                    for name, value in self._run_chunk(chunk).items():
                        if name in parts:
                            parts[name].append(value)
        return {name: np.concatenate(values, axis=0) for name, values in parts.items()}

    def _run_chunk(self, chunk: dict[str, Array]) -> dict[str, Array]:
        self._logger.errors.clear()
        try:
            return self._run_chunk_queued(chunk)
        except BaseException:
            # Copies queued before the failure may still be running: the next call must not
            # overwrite their page-locked buffers under them.
            with suppress(self._cuda.Error):
                self._stream.synchronize()
            raise

    def _run_chunk_queued(self, chunk: dict[str, Array]) -> dict[str, Array]:
        cuda = self._cuda
        for binding in self._bindings:
            if binding.is_input:
                array = chunk[binding.name]
                self._set_input_shape(binding.name, array.shape)
                view = binding.host[: array.size]
                np.copyto(view, array.ravel(), casting="same_kind")
                self._check(
                    functools.partial(cuda.memcpy_htod_async, binding.device, view, self._stream),
                    f"copying {binding.name} to the GPU",
                )
        if not self._context.execute_async_v3(self._stream.handle):
            raise EngineRuntimeError(self._failure("execute_async_v3 failed"))
        shapes: dict[str, tuple[int, ...]] = {}
        for binding in self._bindings:
            if not binding.is_input:
                shapes[binding.name] = tuple(self._context.get_tensor_shape(binding.name))
                view = binding.host[: math.prod(shapes[binding.name])]
                self._check(
                    functools.partial(cuda.memcpy_dtoh_async, view, binding.device, self._stream),
                    f"copying {binding.name} from the GPU",
                )
        self._check(self._stream.synchronize, "waiting for the CUDA stream")
        # Copies: the page-locked buffers are reused by the next chunk.
        return {
            b.name: np.array(
                b.host[: math.prod(shapes[b.name])].reshape(shapes[b.name]), np.float32
            )
            for b in self._bindings
            if not b.is_input
        }

    # -- CUDA context and error handling ---------------------------------------------------

    @contextmanager
    def _active(self) -> Iterator[None]:
        """Make this runtime's CUDA context current for the block, then restore the caller's."""
        self._check(self._cuda_context.push, "activating the CUDA context")
        try:
            yield
        finally:
            self._check(self._cuda.Context.pop, "deactivating the CUDA context")

    def _check(self, call: Callable[[], T], what: str) -> T:
        """Run a CUDA call; its pycuda error becomes EngineRuntimeError saying what failed."""
        try:
            return call()
        except self._cuda.Error as exc:
            raise EngineRuntimeError(f"{self.manifest.name}: CUDA error {what}: {exc}") from exc

    def _trt_call(self, call: Callable[[], T], what: str) -> T:
        """Run a TensorRT factory; None (its way of failing) becomes EngineRuntimeError."""
        result = call()
        if result is None:
            raise EngineRuntimeError(self._failure(f"{what} returned None"))
        return result

    def _failure(self, what: str) -> str:
        errors = self._logger.errors[-5:]
        detail = f" (TensorRT: {'; '.join(errors)})" if errors else ""
        return f"{self.manifest.name}: TensorRT on {self.gpu_name}: {what}{detail}"

    def _release(self) -> None:
        if self._cuda_context is None:
            return
        # TensorRT objects and device memory must go while their context is current.
        with self._lock:
            self._free_all()

    def _free_all(self) -> None:
        self._check(self._cuda_context.push, "activating the CUDA context")
        try:
            for binding in self._bindings:
                binding.device.free()
                binding.host.base.free()
            self._bindings = []
            self._context = None
            self._engine = None
            self._trt_runtime = None
            self._stream = None
        finally:
            # Detached while current, which destroys it (and pops it) on any thread; pycuda
            # destroys a context that is not current only on the thread that made it, and a
            # close() from another thread would leak it with its memory.
            context, self._cuda_context = self._cuda_context, None
            context.detach()
