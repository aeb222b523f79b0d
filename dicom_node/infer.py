"""Running the engines: batches of hips in, :class:`Prediction` per hip out.

Each engine is opened once from ``engines.cache_dir/<name>`` on the configured
backend (see :mod:`engines.runtimes`). Probabilities come from the manifest's
probability output (softmax when it holds logits). Heat maps come from the same
forward pass: Grad-CAM from the last feature map and the linear head for the
screening engine (and the multimodal engine's radiograph branch), the
interpretive probability maps for Hip-Net; the osteoporosis engine has none.

Multi-input engines get their other inputs by name: ``ct`` (the prepared volume,
zeros when the study has none), ``text`` (the clinical text's embedding from the
engine's own text encoder, run here with ONNX Runtime whatever the backend),
``present`` (which of radiograph, CT and text are there), ``clinical`` and
``missing`` (the patient's variables and their missing mask). Clinical text is
patient data: it goes to the encoder and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from dicom_node.clinical import (
    INVALID_WORDS,
    VECTOR_FIELDS,
    ClinicalContext,
    ClinicalText,
    ClinicalVariables,
)
from dicom_node.config import EnginesConfig
from dicom_node.errors import DicomNodeError
from dicom_node.models import HipTask, Prediction
from dicom_node.preprocess import HipInput, normalise
from engines.gradcam import grad_cam
from engines.gradcam import normalise as normalise_map
from engines.manifest import Manifest, ManifestError, verify_artefacts
from engines.runtimes import EngineRuntimeError, Runtime, RuntimeOptions, open_runtime
from engines.text_encoder import EMBEDDING_DIM, OnnxTextEncoder, TextEncoderError

log = logging.getLogger(__name__)


# The order of the multimodal engine's ``present`` input and ``attention`` output
# (engines.models.hip_multimodal.MODALITIES; a test holds the two together).
MODALITY_ORDER = ("radiograph", "ct", "text")
# The demographics the osteoporosis engine reads (BMI is derived from size and weight).
CLINICAL_INPUTS = ("age", "sex", "height", "weight")


class EngineUnavailableError(DicomNodeError, RuntimeError):
    """An engine the routing needs is not built or cannot be opened."""


class EngineOutputError(DicomNodeError, ValueError):
    """An engine answered with values no finding can be read from (NaN or infinite)."""


@dataclass(frozen=True)
class HipBatchItem:
    task: HipTask
    ap: HipInput
    lateral: HipInput | None
    ct: npt.NDArray[np.float32] | None = None  # the engine's CT input (D, H, W)
    clinical: ClinicalContext | None = None
    notes: tuple[str, ...] = ()  # what the study had and this hip's inputs do not use


@dataclass
class _Engine:
    manifest: Manifest
    runtime: Runtime
    head: npt.NDArray[np.float32] | None  # (K, C) linear head for Grad-CAM
    text: OnnxTextEncoder | None = None


def _softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    out: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def _reads(engine: _Engine, text: str) -> bool:
    """Whether ``engine`` reads ``text``: any for an engine without a text encoder."""
    return bool(text) and (engine.text is None or engine.text.tokenizer.readable(text))


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
        except (ManifestError, EngineRuntimeError, OSError, KeyError) as exc:
            raise EngineUnavailableError(f"engine {name!r} in {folder}: {exc}") from exc
        try:
            return EngineSet._complete(runtime, folder, name, options)
        except BaseException:
            # A TensorRT context with its device memory, a Triton channel: freed, not left
            # behind by an engine whose head or text encoder failed its check.
            runtime.close()
            raise

    @staticmethod
    def _complete(runtime: Runtime, folder: Path, name: str, options: RuntimeOptions) -> _Engine:
        """The opened runtime's engine with what it needs besides: head, text encoder."""
        manifest = runtime.manifest
        try:
            if manifest.name != name:
                # Routing, triage overrides and the SR name engines by their folder: a
                # manifest of another name would have its overrides silently ignored.
                raise ManifestError(
                    f"name: the manifest names engine {manifest.name!r}, but it is in the "
                    f"folder of engine {name!r} (rename one of them)"
                )
            head = None
            if manifest.heatmap.head_artefact:
                verify_artefacts(manifest, folder, (manifest.heatmap.head_artefact,))
                path = manifest.artefact_path(folder, manifest.heatmap.head_artefact)
                with np.load(path) as npz:
                    head = np.asarray(npz["weight"], dtype=np.float32)
            text = EngineSet._text_encoder(manifest, folder, options)
            clinical = manifest.preprocessing.clinical
            if clinical and tuple(clinical) != VECTOR_FIELDS:
                raise ManifestError(
                    f"preprocessing.clinical: expected the columns {list(VECTOR_FIELDS)}, "
                    f"got {list(clinical)}"
                )
            pre = manifest.preprocessing
            if clinical and (pre.clinical_unseen is None or pre.clinical_limits is None):
                log.warning(
                    "engine %s: its manifest does not record which clinical values training "
                    "saw, so one it never saw (such as sex O, or a weight in pounds) is read "
                    "as given; re-export it (dicom-node engines export %s)", name, name,
                )  # fmt: skip
        except (ManifestError, EngineRuntimeError, TextEncoderError, OSError, KeyError) as exc:
            raise EngineUnavailableError(f"engine {name!r} in {folder}: {exc}") from exc
        log.info("engine %s %s ready (%s)", manifest.name, manifest.version, runtime.backend)
        return _Engine(manifest, runtime, head, text)

    @staticmethod
    def _text_encoder(
        manifest: Manifest, folder: Path, options: RuntimeOptions
    ) -> OnnxTextEncoder | None:
        if not any(spec.name == "text" for spec in manifest.inputs):
            return None
        keys = ("text_encoder", "text_tokenizer")
        verify_artefacts(manifest, folder, keys)
        return OnnxTextEncoder(
            manifest.artefact_path(folder, keys[0]),
            manifest.artefact_path(folder, keys[1]),
            threads=options.threads or None,
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._engines)

    def reads_text(self, name: str, text: str) -> bool:
        """Does engine ``name`` read ``text`` (routing's ``requires: [text]`` asks the engine
        that will run)? Its tokenizer decides: a placeholder ("N/A", "-") or a script it
        lacks is no text to it. An engine without a text input, or not open, reads any."""
        engine = self._engines.get(name)
        return _reads(engine, text) if engine is not None else bool(text)

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
        batch, inputs, notes = self._batch(engine, items)
        outputs = engine.runtime.infer(batch)
        scores = outputs[m.probability_output]
        probabilities = _softmax(scores) if m.output_is_logits else scores
        maps = self._heatmaps(engine, outputs, probabilities.shape[1])
        attention = outputs.get("attention")
        pji = outputs.get("pji_risk")
        # A NaN compares false with every threshold: it would read as "absent", in a report
        # that says every algorithm succeeded. Refuse the batch instead.
        for label, values in (("probabilities", probabilities), ("pji_risk", pji),
                              ("attention", attention)):  # fmt: skip
            if values is not None and not np.all(np.isfinite(values)):
                hips = ", ".join(
                    f"{i.task.side} of {i.ap.image.source.sop_instance_uid}"
                    for n, i in enumerate(items)
                    if not np.all(np.isfinite(values[n]))
                )
                raise EngineOutputError(
                    f"engine {m.name} {m.version} ({engine.runtime.backend}) gave non-finite "
                    f"{label} for hip {hips}"
                )
        predictions = []
        for n, item in enumerate(items):
            predictions.append(
                Prediction(
                    task=item.task,
                    version=m.version,
                    classes=m.class_names,
                    probabilities=tuple(float(p) for p in probabilities[n]),
                    heatmaps={} if maps is None else
                    {c: maps[n, k] for k, c in enumerate(m.class_names)},
                    pji_risk=None if pji is None else float(pji[n]),
                    inputs=inputs[n],
                    notes=notes[n],
                    attention={} if attention is None else
                    {k: float(w) for k, w in zip(MODALITY_ORDER, attention[n], strict=True)},
                )
            )  # fmt: skip
        return predictions

    @staticmethod
    def _batch(
        engine: _Engine, items: Sequence[HipBatchItem]
    ) -> tuple[dict[str, npt.NDArray[np.float32]], list[dict[str, bool]], list[tuple[str, ...]]]:
        """The engine's named inputs for ``items``, which inputs each item had, and notes on
        what it had and the engine did not read."""
        m = engine.manifest
        pre = m.preprocessing
        names = [spec.name for spec in m.inputs]
        ap = np.stack([normalise(i.ap.pixels, pre) for i in items])[:, None]
        batch: dict[str, npt.NDArray[np.float32]] = {m.image_input.name: ap}
        inputs: list[dict[str, bool]] = [{} for _ in items]
        notes: list[tuple[str, ...]] = [i.notes for i in items]
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
        if "ct" in names:
            grid = pre.volume or (1, 1, 1)
            empty = np.zeros(grid, dtype=np.float32)
            batch["ct"] = np.stack([empty if i.ct is None else i.ct for i in items])[:, None]
        has_text = [False] * len(items)
        if "text" in names:
            batch["text"], has_text = EngineSet._embeddings(engine, items)
            for n, (i, used) in enumerate(zip(items, has_text, strict=True)):
                request = ClinicalText() if i.clinical is None else i.clinical.text.request
                where = (m.name, i.task.side, i.ap.image.source.sop_instance_uid)
                if request.undecoded_sources:
                    # Only those attributes: the rest of the text is read (or not) as usual.
                    what = ", ".join(request.undecoded_sources)
                    notes[n] += (
                        f"not used: clinical text of {what} (bytes that do not decode in the "
                        "image's Specific Character Set)",
                    )
                    log.warning("engine %s: %s hip of %s: clinical text of %s does not decode "
                                "in its character set; left out", *where, what)  # fmt: skip
                if not used and request.decoded.text:
                    notes[n] += (
                        "not used: clinical text (no word the engine's English text encoder "
                        "reads: a placeholder such as '-' or 'N/A', or another script; read "
                        "as missing)",
                    )
                    log.warning("engine %s: %s hip of %s: clinical text has no word the "
                                "text encoder reads; read as missing", *where)  # fmt: skip
        if "present" in names:
            flags = [(True, i.ct is not None, t) for i, t in zip(items, has_text, strict=True)]
            batch["present"] = np.array(flags, dtype=np.float32)
            for n, flag in enumerate(flags):
                inputs[n] = dict(zip(MODALITY_ORDER, flag, strict=True))
        if "clinical" in names:
            known = [EngineSet._variables(m, i) for i in items]
            vectors = [EngineSet._clinical(v) for v, _ in known]
            batch["clinical"] = np.stack([v for v, _ in vectors])
            batch["missing"] = np.stack([gone for _, gone in vectors]).astype(np.float32)
            for n, (variables, unseen) in enumerate(known):
                inputs[n] = {
                    k: variables is not None and not variables.is_missing(k)
                    for k in CLINICAL_INPUTS
                }
                # A value the header gave but the node could not use (height 162: cm, not
                # m) looked in the SR exactly like one never sent.
                invalid = () if variables is None else variables.invalid
                notes[n] += tuple(
                    f"not used: {name} (in the header, but not {INVALID_WORDS[name]}; read "
                    "as missing)"
                    for name in invalid
                )
                if invalid:
                    log.warning(
                        "engine %s: %s hip of %s: %s in the header but not usable; read as "
                        "missing", m.name, items[n].task.side,
                        items[n].ap.image.source.sop_instance_uid, ", ".join(invalid),
                    )  # fmt: skip
                if unseen:
                    notes[n] += (
                        f"not used: {', '.join(unseen)} (a value no training case of this "
                        "engine had, or outside the range its training covered; read as "
                        "missing)",
                    )
        return batch, inputs, notes

    @staticmethod
    def _variables(
        m: Manifest, item: HipBatchItem
    ) -> tuple[ClinicalVariables | None, tuple[str, ...]]:
        """The hip's variables as the engine may read them, and those it may not: a value in
        a column no training case set (sex O for an engine trained on F and M) is missing."""
        if item.clinical is None:
            return None, ()
        variables = item.clinical.variables
        unseen = variables.unseen(m.preprocessing.clinical_unseen or ())
        unseen += variables.outside(m.preprocessing.clinical_limits or {})
        if unseen:
            log.warning(
                "engine %s: %s hip of %s: %s read as missing (a value no training case had, "
                "or outside what training covered)",
                m.name, item.task.side, item.ap.image.source.sop_instance_uid, ", ".join(unseen),
            )  # fmt: skip
        return variables.without(unseen), unseen

    @staticmethod
    def _embeddings(
        engine: _Engine, items: Sequence[HipBatchItem]
    ) -> tuple[npt.NDArray[np.float32], list[bool]]:
        texts = ["" if i.clinical is None else i.clinical.text.request.decoded.text for i in items]
        has_text = [_reads(engine, t) for t in texts]
        out = np.zeros((len(items), EMBEDDING_DIM), dtype=np.float32)
        if any(has_text) and engine.text is not None:
            rows = [n for n, t in enumerate(has_text) if t]
            out[rows] = engine.text.encode([texts[n] for n in rows])
        return out, has_text

    @staticmethod
    def _clinical(
        variables: ClinicalVariables | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        if variables is None:
            width = len(VECTOR_FIELDS)
            return np.zeros(width, dtype=np.float32), np.ones(width, dtype=np.bool_)
        return variables.as_vector(standardise=True)

    @staticmethod
    def _heatmaps(
        engine: _Engine, outputs: dict[str, npt.NDArray[np.float32]], classes: int
    ) -> npt.NDArray[np.float32] | None:
        """(N, K, h, w) maps in [0, 1] on the engine's output grid; None for an engine
        whose manifest says it has none."""
        spec = engine.manifest.heatmap
        if spec.kind == "none":
            return None
        # What each kind needs is there: read_manifest refuses a manifest without it.
        if spec.kind == "interpretive-map":
            raw = outputs[cast(str, spec.map_output)]
        else:
            features = outputs[cast(str, spec.features_output)]
            head = cast(npt.NDArray[np.float32], engine.head)
            raw = np.stack(
                [grad_cam(features, head, k, spec.gem_p) for k in range(classes)], axis=1
            )
        n, k, h, w = raw.shape
        flat = normalise_map(raw.reshape(n * k, h, w).astype(np.float32))
        out: npt.NDArray[np.float32] = flat.reshape(n, k, h, w).astype(np.float32)
        return out

    def close(self) -> None:
        for engine in self._engines.values():
            engine.runtime.close()
        self._engines.clear()
