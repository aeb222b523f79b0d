"""Running the engines: batches of hips in, :class:`Prediction` per hip out.

Each engine is opened once from ``engines.cache_dir/<name>`` on the configured
backend (see :mod:`engines.runtimes`). Probabilities come from the manifest's
probability output (softmax when it holds logits). Heat maps come from the same
forward pass: Grad-CAM from the last feature map and the linear head for the
screening engine, the interpretive probability maps for Hip-Net.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicom_node.config import EnginesConfig
from dicom_node.errors import DicomNodeError
from dicom_node.models import HipTask, Prediction
from dicom_node.preprocess import HipInput, normalise
from engines.gradcam import grad_cam
from engines.gradcam import normalise as normalise_map
from engines.manifest import Manifest, ManifestError, verify_artefacts
from engines.runtimes import EngineRuntimeError, Runtime, RuntimeOptions, open_runtime

log = logging.getLogger(__name__)


class EngineUnavailableError(DicomNodeError, RuntimeError):
    """An engine the routing needs is not built or cannot be opened."""


@dataclass(frozen=True)
class HipBatchItem:
    task: HipTask
    ap: HipInput
    lateral: HipInput | None


@dataclass
class _Engine:
    manifest: Manifest
    runtime: Runtime
    head: npt.NDArray[np.float32] | None  # (K, C) linear head for Grad-CAM


def _softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    out: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


class EngineSet:
    """The opened engines the routing needs, by name."""

    def __init__(self, cfg: EnginesConfig, names: Sequence[str]) -> None:
        self._engines: dict[str, _Engine] = {}
        options = RuntimeOptions(
            backend=cfg.backend,
            precision=cfg.precision,
            threads=cfg.threads,
            triton_url=cfg.triton.url,
            triton_timeout_seconds=cfg.triton.timeout_seconds,
        )
        try:
            for name in dict.fromkeys(names):
                self._engines[name] = self._open(cfg.cache_dir / name, name, options)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open(folder: Path, name: str, options: RuntimeOptions) -> _Engine:
        if not (folder / "manifest.yaml").is_file():
            raise EngineUnavailableError(
                f"engine {name!r}: no manifest in {folder} (build the demo engines with "
                "`dicom-node engines build --demo`, or export your own checkpoint there)"
            )
        try:
            runtime = open_runtime(folder, options)
            manifest = runtime.manifest
            head = None
            if manifest.heatmap.head_artefact:
                verify_artefacts(manifest, folder, (manifest.heatmap.head_artefact,))
                path = manifest.artefact_path(folder, manifest.heatmap.head_artefact)
                with np.load(path) as npz:
                    head = np.asarray(npz["weight"], dtype=np.float32)
        except (ManifestError, EngineRuntimeError, OSError, KeyError) as exc:
            raise EngineUnavailableError(f"engine {name!r} in {folder}: {exc}") from exc
        log.info("engine %s %s ready (%s)", manifest.name, manifest.version, runtime.backend)
        return _Engine(manifest, runtime, head)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._engines)

    def manifest(self, name: str) -> Manifest:
        return self._engine(name).manifest

    def backend(self, name: str) -> str:
        return self._engine(name).runtime.backend

    def _engine(self, name: str) -> _Engine:
        try:
            return self._engines[name]
        except KeyError:
            raise EngineUnavailableError(
                f"engine {name!r} is not open (open: {', '.join(self._engines) or 'none'})"
            ) from None

    def predict(self, name: str, items: Sequence[HipBatchItem]) -> list[Prediction]:
        """Run one batch of hips through engine ``name``."""
        if not items:
            return []
        engine = self._engine(name)
        m = engine.manifest
        pre = m.preprocessing
        ap = np.stack([normalise(i.ap.pixels, pre) for i in items])[:, None]
        names = [spec.name for spec in m.inputs]
        batch: dict[str, npt.NDArray[np.float32]] = {names[0]: ap}
        if "lateral" in names:
            present = np.array([i.lateral is not None for i in items], dtype=np.float32)
            lateral = np.stack(
                [
                    normalise(i.lateral.pixels, pre) if i.lateral else np.zeros_like(i.ap.pixels)
                    for i in items
                ]
            )[:, None]
            batch["lateral"] = lateral
            batch["lateral_present"] = present
        outputs = engine.runtime.infer(batch)
        scores = outputs[m.probability_output]
        probabilities = _softmax(scores) if m.output_is_logits else scores
        maps = self._heatmaps(engine, outputs, probabilities.shape[1])
        predictions = []
        for n, item in enumerate(items):
            pji = outputs.get("pji_risk")
            predictions.append(
                Prediction(
                    task=item.task,
                    version=m.version,
                    classes=m.class_names,
                    probabilities=tuple(float(p) for p in probabilities[n]),
                    heatmaps={c: maps[n, k] for k, c in enumerate(m.class_names)},
                    pji_risk=None if pji is None else float(pji[n]),
                )
            )
        return predictions

    @staticmethod
    def _heatmaps(
        engine: _Engine, outputs: dict[str, npt.NDArray[np.float32]], classes: int
    ) -> npt.NDArray[np.float32]:
        """(N, K, h, w) maps in [0, 1] on the engine's output grid."""
        spec = engine.manifest.heatmap
        if spec.kind == "interpretive-map" and spec.map_output:
            raw = outputs[spec.map_output]
        elif spec.features_output and engine.head is not None:
            features = outputs[spec.features_output]
            raw = np.stack(
                [grad_cam(features, engine.head, k, spec.gem_p) for k in range(classes)], axis=1
            )
        else:
            raise EngineUnavailableError(
                f"engine {engine.manifest.name}: manifest gives no way to a heat map "
                f"(kind {spec.kind!r})"
            )
        n, k, h, w = raw.shape
        flat = normalise_map(raw.reshape(n * k, h, w).astype(np.float32))
        out: npt.NDArray[np.float32] = flat.reshape(n, k, h, w).astype(np.float32)
        return out

    def close(self) -> None:
        for engine in self._engines.values():
            engine.runtime.close()
        self._engines.clear()
