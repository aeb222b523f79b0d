"""ONNX Runtime: the CPU default (CPUExecutionProvider only: GPUs are served through the
tensorrt or triton backends)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.manifest import Manifest, verify_artefacts
from engines.runtimes.base import Array, EngineRuntimeError, Runtime, check_signature

PRECISIONS = ("fp32", "fp16")


class OnnxRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(
        self,
        manifest: Manifest,
        folder: Path,
        precision: str = "fp32",
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ) -> None:
        super().__init__(manifest, folder)
        if precision not in PRECISIONS:
            raise EngineRuntimeError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        import onnxruntime as ort

        key = f"onnx_{precision}"
        verify_artefacts(manifest, folder, (key,))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available]
        if not chosen:
            raise EngineRuntimeError(
                f"onnxruntime: none of the providers {list(providers)} is available "
                f"(available: {sorted(available)})"
            )
        self.precision = precision
        path = manifest.artefact_path(folder, key)
        try:
            self._session: Any = ort.InferenceSession(
                str(path), sess_options=options, providers=chosen
            )
        except Exception as exc:  # onnxruntime's own types (InvalidProtobuf, Fail, ...)
            raise EngineRuntimeError(
                f"{manifest.name} on onnxruntime: cannot load {path.name} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        check_signature(
            manifest,
            "onnxruntime",
            {i.name: i.shape for i in self._session.get_inputs()},
            {o.name: o.shape for o in self._session.get_outputs()},
        )
        for tensor in self._session.get_inputs():
            # Inputs go as float32 (check_batch): an export whose inputs are float16 (an fp16
            # conversion without keep_io_types) opened, then failed every study.
            if tensor.type != "tensor(float)":
                raise EngineRuntimeError(
                    f"{manifest.name} on onnxruntime: {path.name} takes input {tensor.name!r} "
                    f"as {tensor.type}; the node sends tensor(float) (float32): export it with "
                    "float32 inputs and outputs"
                )
        # A batch dimension the export fixed (no dynamic axes): batches go in pieces of that
        # size (a pelvis is a batch of 2, which failed every study).
        fixed = {d for i in self._session.get_inputs() for d in i.shape[:1] if isinstance(d, int)}
        self.max_batch_size = min(fixed) if fixed else 0
        self._names = [o.name for o in self._session.get_outputs()]

    def _run(self, batch: dict[str, Array]) -> Mapping[str, npt.ArrayLike]:
        # One read: a close() from another thread (a stop) drops the attribute, not this run's
        # session, which lives until the run ends.
        session = self._session
        if session is None:
            raise EngineRuntimeError(f"{self.manifest.name} on onnxruntime: runtime is closed")
        size = next(iter(batch.values())).shape[0]
        step = self.max_batch_size or size
        parts: list[list[Any]] = []
        for start in range(0, size, step):
            chunk = {name: array[start : start + step] for name, array in batch.items()}
            short = step - len(next(iter(chunk.values())))
            if self.max_batch_size and short:
                # The last piece of a batch the fixed size does not divide: padded with
                # copies of its last item, whose outputs are dropped.
                chunk = {n: np.concatenate([a, np.repeat(a[-1:], short, axis=0)])
                         for n, a in chunk.items()}  # fmt: skip
            try:
                outputs = session.run(self._names, chunk)
                parts.append([o[: len(o) - short] if short else o for o in outputs])
            except Exception as exc:  # onnxruntime's own types (InvalidArgument, Fail, ...)
                raise EngineRuntimeError(
                    f"{self.manifest.name} on onnxruntime: inference failed "
                    f"({type(exc).__name__}: {' '.join(str(exc).split())})"
                ) from exc
        if len(parts) == 1:
            return dict(zip(self._names, parts[0], strict=True))
        return {
            name: np.concatenate([p[i] for p in parts], axis=0)
            for i, name in enumerate(self._names)
        }

    def _release(self) -> None:
        self._session = None
