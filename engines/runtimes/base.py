"""One protocol for every inference backend: ``infer(batch) -> outputs``.

A runtime is opened from an engine's manifest and folder; it checks each batch
against the manifest's input specification (names, dtype, shape but the batch
axis) before running it, returns the manifest's outputs by name as float32
numpy arrays, and releases what it holds in :meth:`Runtime.close` (also as a
context manager). Backends: onnxruntime (CPU default), torch, tensorrt (GPU),
triton (remote).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from dicom_node.errors import DicomNodeError
from engines.manifest import Manifest, TensorSpec

Array = npt.NDArray[np.float32]


class EngineRuntimeError(DicomNodeError, RuntimeError):
    """A backend could not be opened or failed while running."""


class InferenceInputError(DicomNodeError, ValueError):
    """A batch does not match the engine's input specification."""


class Runtime(abc.ABC):
    """An opened engine on one backend."""

    backend: ClassVar[str]

    def __init__(self, manifest: Manifest, folder: Path) -> None:
        self.manifest = manifest
        self.folder = folder
        self._closed = False

    @property
    def input_spec(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def output_spec(self) -> tuple[TensorSpec, ...]:
        return self.manifest.outputs

    def infer(self, batch: Mapping[str, npt.ArrayLike]) -> dict[str, Array]:
        """Run one batch; every input named in :attr:`input_spec`, one batch size."""
        if self._closed:
            raise EngineRuntimeError(f"{self.manifest.name} on {self.backend}: runtime is closed")
        arrays = check_batch(self.input_spec, batch)
        outputs = self._run(arrays)
        return {
            spec.name: np.asarray(outputs[spec.name], dtype=np.float32) for spec in self.output_spec
        }

    @abc.abstractmethod
    def _run(self, batch: dict[str, Array]) -> Mapping[str, npt.ArrayLike]:
        """Run a checked batch; return at least every output of :attr:`output_spec`."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    @abc.abstractmethod
    def _release(self) -> None:
        """Free what the backend holds (sessions, device memory, connections)."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_signature(
    manifest: Manifest,
    backend: str,
    inputs: Mapping[str, Sequence[object]],
    outputs: Mapping[str, Sequence[object]],
) -> None:
    """Does the model take and give what the manifest says (names, ranks, fixed dims), and
    does the manifest list every input the model takes (extra outputs are not read)?

    ``inputs``/``outputs`` map the model's tensor names to its shapes, a dimension being
    an int or, when dynamic, anything else (a name, None). Checked at open: a manifest
    written for another export would otherwise fail (or mislabel) every study.
    """
    sides = (("input", manifest.inputs, inputs), ("output", manifest.outputs, outputs))
    for kind, specs, model in sides:
        for spec in specs:
            if spec.name not in model:
                raise EngineRuntimeError(
                    f"{manifest.name} on {backend}: the model has no {kind} {spec.name!r} "
                    f"(has: {', '.join(model)})"
                )
            shape = list(model[spec.name])
            fixed = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
            if len(shape) != len(spec.shape) or any(
                want != -1 and got != -1 and want != got
                for want, got in zip(spec.shape, fixed, strict=True)
            ):
                raise EngineRuntimeError(
                    f"{manifest.name} on {backend}: {kind} {spec.name!r} is {fixed} in the "
                    f"model, the manifest says {list(spec.shape)} (-1 = any)"
                )
    unlisted = [name for name in inputs if name not in {s.name for s in manifest.inputs}]
    if unlisted:
        # The node sends what the manifest lists: a model input it leaves out opened, then
        # every batch failed in the backend.
        raise EngineRuntimeError(
            f"{manifest.name} on {backend}: the model takes input {unlisted[0]!r}, which the "
            f"manifest does not list (it lists: {', '.join(s.name for s in manifest.inputs)})"
        )


def check_batch(
    specs: tuple[TensorSpec, ...], batch: Mapping[str, npt.ArrayLike]
) -> dict[str, Array]:
    """The batch as contiguous float32 arrays, or an error naming what does not fit."""
    expected = [s.name for s in specs]
    if sorted(batch) != sorted(expected):
        raise InferenceInputError(f"inputs: expected {expected}, got {sorted(batch)}")
    arrays: dict[str, Array] = {}
    size: int | None = None
    for spec in specs:
        array = np.asarray(batch[spec.name])
        if array.dtype.kind not in "fiub":
            raise InferenceInputError(f"{spec.name}: expected numbers, got dtype {array.dtype}")
        if array.ndim != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
        ):
            raise InferenceInputError(
                f"{spec.name}: expected shape {list(spec.shape)} (-1 = batch), "
                f"got {list(array.shape)}"
            )
        if size is None:
            size = array.shape[0]
        elif array.shape[0] != size:
            raise InferenceInputError(
                f"{spec.name}: batch size {array.shape[0]} differs from {size} of the other inputs"
            )
        arrays[spec.name] = np.ascontiguousarray(array, dtype=np.float32)
    if not size:
        raise InferenceInputError("batch: expected at least one item, got an empty batch")
    return arrays
