"""Open an engine on the configured backend: ``open_runtime(folder, RuntimeOptions(...))``.

``auto`` picks TensorRT when the ``gpu`` extra is installed and a CUDA device
answers, else ONNX Runtime on the CPU. GPU and Triton modules are imported only
when chosen, so the default install needs neither.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from engines.manifest import Manifest, read_manifest
from engines.runtimes.base import EngineRuntimeError, InferenceInputError, Runtime

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt", "triton")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    backend: str = "auto"
    precision: str = "fp32"  # onnxruntime only; TensorRT always builds FP16
    threads: int = 0  # CPU threads (onnxruntime, torch); 0 = one per core
    plan_cache: Path | None = None  # TensorRT plans; default: <engine folder>/tensorrt
    triton_url: str = "127.0.0.1:8001"
    triton_timeout_seconds: float = 30.0


def gpu_available() -> bool:
    """True when TensorRT and pycuda are importable and a CUDA device answers."""
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        return False
    from engines.runtimes.tensorrt import cuda_device_count

    return cuda_device_count() > 0


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise EngineRuntimeError(
            f"engines.backend: expected one of {', '.join(BACKENDS)}, got {backend!r}"
        )
    if backend != "auto":
        return backend
    return "tensorrt" if gpu_available() else "onnxruntime"


def needed_artefacts(manifest: Manifest, backend: str, precision: str = "fp32") -> tuple[str, ...]:
    """The artefacts the node opens for ``manifest`` on ``backend`` (resolved): the model
    file the runtime loads (none for Triton, whose server holds the model), the linear head
    for single-pass Grad-CAM and the text encoder, which run in the node whatever the
    backend. The rest (the training checkpoint, the other precision) it never opens."""
    from engines.runtimes.tensorrt import PLAN_SOURCE  # no TensorRT import: a constant

    model = {
        "onnxruntime": (f"onnx_{precision}",),
        "torch": ("checkpoint",),
        "tensorrt": (PLAN_SOURCE,),
    }.get(backend, ())
    head = (manifest.heatmap.head_artefact,) if manifest.heatmap.head_artefact else ()
    text = (
        ("text_encoder", "text_tokenizer") if any(t.name == "text" for t in manifest.inputs) else ()
    )
    return (*model, *head, *text)


def open_runtime(folder: Path, options: RuntimeOptions | None = None) -> Runtime:
    """The engine whose manifest is in ``folder``, opened on the chosen backend."""
    options = options or RuntimeOptions()
    manifest = read_manifest(folder)
    backend = resolve_backend(options.backend)
    log.info("opening engine %s %s on %s", manifest.name, manifest.version, backend)
    if backend == "onnxruntime":
        from engines.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(manifest, folder, precision=options.precision, threads=options.threads)
    if backend == "torch":
        from engines.runtimes.torch_runtime import TorchRuntime

        return TorchRuntime(manifest, folder, threads=options.threads)
    if backend == "tensorrt":
        from engines.runtimes.tensorrt import TensorRTRuntime

        return TensorRTRuntime(
            manifest, folder, plan_cache=options.plan_cache or folder / "tensorrt"
        )
    from engines.runtimes.triton import TritonRuntime

    return TritonRuntime(
        manifest, folder, url=options.triton_url, timeout_seconds=options.triton_timeout_seconds
    )


__all__ = [
    "BACKENDS",
    "EngineRuntimeError",
    "InferenceInputError",
    "Runtime",
    "RuntimeOptions",
    "gpu_available",
    "needed_artefacts",
    "open_runtime",
    "resolve_backend",
]
