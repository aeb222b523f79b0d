"""The torch backend: the training checkpoint in eval mode, for development and parity checks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy.typing as npt
import torch

from engines.manifest import Manifest, verify_artefacts
from engines.models import create
from engines.runtimes.base import Array, EngineRuntimeError, Runtime
from engines.serving import input_names, output_names, serving_graph


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(self, manifest: Manifest, folder: Path, threads: int = 0) -> None:
        super().__init__(manifest, folder)
        verify_artefacts(manifest, folder, ("checkpoint",))
        if threads:
            torch.set_num_threads(threads)
        path = manifest.artefact_path(folder, "checkpoint")
        try:
            model = create(manifest.model, **manifest.model_kwargs)
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # torch's unpickling and state-dict errors
            raise EngineRuntimeError(
                f"{manifest.name} on torch: cannot load {path.name} ({type(exc).__name__}: {exc})"
            ) from exc
        self._graph: torch.nn.Module | None = serving_graph(model).eval()
        # Inputs and outputs by name: the manifest may list them in any order (inputs went
        # in the manifest's order, so one listing clinical and missing the other way round
        # had the model read each as the other).
        self._inputs = input_names(model)
        if sorted(self._inputs) != sorted(s.name for s in self.input_spec):
            raise EngineRuntimeError(
                f"{manifest.name} on torch: the model takes inputs {list(self._inputs)}, the "
                f"manifest says {[s.name for s in self.input_spec]}"
            )
        self._outputs = output_names(model)
        missing = [s.name for s in self.output_spec if s.name not in self._outputs]
        if missing:
            raise EngineRuntimeError(
                f"{manifest.name} on torch: the model has no output {missing[0]!r} "
                f"(has: {', '.join(self._outputs)})"
            )

    def _run(self, batch: dict[str, Array]) -> Mapping[str, npt.ArrayLike]:
        names = self._inputs
        graph = self._graph  # one read, as in OnnxRuntime._run
        if graph is None:
            raise EngineRuntimeError(f"{self.manifest.name} on torch: runtime is closed")
        with torch.inference_mode():
            outputs = graph(*(torch.from_numpy(batch[n]) for n in names))
        return {name: out.numpy() for name, out in zip(self._outputs, outputs, strict=True)}

    def _release(self) -> None:
        self._graph = None
