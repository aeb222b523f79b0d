"""The torch backend: the training checkpoint in eval mode, for development and parity checks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy.typing as npt
import torch

from engines.manifest import Manifest, verify_artefacts
from engines.models import create
from engines.runtimes.base import Array, EngineRuntimeError, Runtime
from engines.serving import serving_graph


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(self, manifest: Manifest, folder: Path, threads: int = 0) -> None:
        super().__init__(manifest, folder)
        verify_artefacts(manifest, folder, ("checkpoint",))
        if threads:
            torch.set_num_threads(threads)
        model = create(manifest.model, **manifest.model_kwargs)
        state = torch.load(
            manifest.artefact_path(folder, "checkpoint"), map_location="cpu", weights_only=True
        )
        model.load_state_dict(state)
        self._graph: torch.nn.Module | None = serving_graph(model).eval()

    def _run(self, batch: dict[str, Array]) -> Mapping[str, npt.ArrayLike]:
        names = [spec.name for spec in self.input_spec]
        graph = self._graph  # one read, as in OnnxRuntime._run
        if graph is None:
            raise EngineRuntimeError(f"{self.manifest.name} on torch: runtime is closed")
        with torch.inference_mode():
            outputs = graph(*(torch.from_numpy(batch[n]) for n in names))
        return {spec.name: out.numpy() for spec, out in zip(self.output_spec, outputs, strict=True)}

    def _release(self) -> None:
        self._graph = None
