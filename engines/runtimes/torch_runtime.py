"""The torch backend: the training checkpoint in eval mode, for development and parity checks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy.typing as npt
import torch

from engines.manifest import Manifest, verify_artefacts
from engines.models import create
from engines.runtimes.base import Array, EngineRuntimeError, Runtime, check_signature
from engines.serving import example_inputs, input_names, output_names, serving_graph


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
        graph = serving_graph(model).eval()
        self._inputs = input_names(model)
        self._outputs = output_names(model)
        # The names, the channels, the classes and the feature map a dry run at the
        # manifest's size gives, checked as the other backends check their graph's: only
        # names were compared, so a manifest of 7 classes over an 8-class checkpoint opened
        # and every study failed in triage. (The input size itself is the manifest's word
        # here: a checkpoint does not record the size it was trained at.)
        pre = manifest.preprocessing
        example = example_inputs(model, pre.size, volume=pre.volume)
        try:
            with torch.inference_mode():
                results = graph(*example)
        except Exception as exc:  # torch's shape errors: a manifest size the network cannot take
            raise EngineRuntimeError(
                f"{manifest.name} on torch: a dry run at the manifest's size {pre.size} failed "
                f"({type(exc).__name__}: {' '.join(str(exc).split())})"
            ) from exc
        check_signature(
            manifest,
            "torch",
            {n: ("batch", *t.shape[1:]) for n, t in zip(self._inputs, example, strict=True)},
            {n: ("batch", *t.shape[1:]) for n, t in zip(self._outputs, results, strict=True)},
        )
        # Inputs and outputs by name: the manifest may list them in any order (inputs went
        # in the manifest's order, so one listing clinical and missing the other way round
        # had the model read each as the other).
        self._graph: torch.nn.Module | None = graph

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
