"""Package a trained network as an engine folder: checkpoint, ONNX fp32/fp16, head, manifest.

The folder is self-contained and relocatable (paths in the manifest are
relative); its manifest records the SHA-256 of every artefact. Engine-specific
artefacts: the multimodal engine carries its text encoder (ONNX + tokenizer,
``text_encoder/``); the osteoporosis engine its fitted reduction (``reduction.npz``,
also inside the network's buffers and so inside the ONNX graph) and whatever the
caller adds in ``extras`` (the feature-importance plot).

Packaging writes into a staging folder beside the engine's and moves the files in only when
every artefact is written and checked, the manifest last: an export that fails (a size the
network cannot take, an fp16 copy that drifts) leaves a previous engine in ``folder`` as it
was, never its old manifest beside new weights.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engines.catalog import EngineSpec, Finding
from engines.export import ExportError, check_fp16, convert_fp16, export_onnx, sha256_of
from engines.manifest import (
    MANIFEST_NAME,
    Artefact,
    Heatmap,
    Manifest,
    Preprocessing,
    write_manifest,
)
from engines.models.hip_multimodal import HipMultimodal
from engines.models.hipnet import HipNet
from engines.models.osteoporosis import OsteoporosisNet
from engines.serving import example_inputs, gem_exponent, head_weights, tensor_specs

CHECKPOINT = "model.pt"
ONNX_FP32 = "model.onnx"
ONNX_FP16 = "model-fp16.onnx"
HEAD = "head.npz"
# The outputs findings are read from: their fp16 values must stay close to fp32's.
FINDING_OUTPUTS = ("logits", "probabilities", "pji_risk")
TEXT_ENCODER_DIR = "text_encoder"
REDUCTION = "reduction.npz"


def package_engine(
    spec: EngineSpec,
    model: nn.Module,
    size: int,
    folder: Path,
    version: str,
    model_kwargs: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    clinical_use: str = "not for clinical use: trained on synthetic phantoms",
    volume: tuple[int, int, int] | None = None,
    clinical: tuple[str, ...] = (),
    extras: Mapping[str, str] | None = None,
    samples: Sequence[Tensor] | None = None,
    classes: Sequence[Finding] | None = None,
    preprocessing: Preprocessing | None = None,
) -> Manifest:
    """Write every artefact of ``model`` into ``folder`` and return the manifest written.

    ``volume`` is the CT grid of an engine with a CT input, ``clinical`` the columns of an
    engine with clinical variables; ``extras`` maps artefact keys to files the caller has
    already written into ``folder`` (relative paths), to be hashed into the manifest.
    ``samples`` are a few items as serving feeds them (held-out images) on which the fp16
    copy's drift from fp32 is measured; without them, zeros of the input shapes.
    ``classes`` (default: the catalogue's) are the engine's manifest's when it is packaged
    again: their thresholds, codes and wording, in the catalogue's order of names; so is
    ``preprocessing``, whose normalisation and CT window are kept (``size``, ``volume`` and
    ``clinical`` are set from the arguments, the clinical columns' limits from the model).
    """
    if classes is not None and tuple(c.name for c in classes) != spec.class_names:
        raise ExportError(
            f"{spec.name}: classes {', '.join(c.name for c in classes)} are not the "
            f"network's outputs ({', '.join(spec.class_names)})"
        )
    stage = folder.parent / f".{folder.name}.packaging"
    shutil.rmtree(stage, ignore_errors=True)  # left by an earlier failure
    stage.mkdir(parents=True)
    try:
        for relative in (extras or {}).values():
            (stage / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / relative, stage / relative)
        manifest = _package(
            spec, model, size, stage, version, model_kwargs, training, evaluation,
            clinical_use, volume, clinical, extras, samples,
            spec.findings if classes is None else tuple(classes),
            preprocessing or Preprocessing(size=size),
        )  # fmt: skip
        _install(stage, folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _install(stage: Path, folder: Path) -> None:
    """Move every file of ``stage`` into ``folder``, replacing what is there, the manifest
    last (a reader never sees the new manifest before its artefacts)."""
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    for path in [*files, stage / MANIFEST_NAME]:
        target = folder / path.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)


def _package(
    spec: EngineSpec,
    model: nn.Module,
    size: int,
    folder: Path,
    version: str,
    model_kwargs: Mapping[str, Any] | None,
    training: Mapping[str, Any] | None,
    evaluation: Mapping[str, Any] | None,
    clinical_use: str,
    volume: tuple[int, int, int] | None,
    clinical: tuple[str, ...],
    extras: Mapping[str, str] | None,
    samples: Sequence[Tensor] | None,
    classes: tuple[Finding, ...],
    base: Preprocessing,
) -> Manifest:
    if isinstance(model, OsteoporosisNet) and len(clinical) != model.head.clinical_width:
        raise ExportError(
            f"clinical: the network takes {model.head.clinical_width} clinical columns, "
            f"got {len(clinical)} names ({', '.join(clinical) or 'none'})"
        )
    model = model.eval()
    torch.save(model.state_dict(), folder / CHECKPOINT)
    fp32 = export_onnx(model, folder / ONNX_FP32, size, volume=volume)
    fp16 = convert_fp16(fp32.path, folder / ONNX_FP16)
    check_fp16(
        fp32.path, fp16.path,
        samples if samples is not None else example_inputs(model, size, batch=2, volume=volume),
        fp32.input_names, compared=FINDING_OUTPUTS,
    )  # fmt: skip
    artefacts = {
        "checkpoint": _artefact(folder, CHECKPOINT),
        "onnx_fp32": Artefact(ONNX_FP32, fp32.sha256),
        "onnx_fp16": Artefact(ONNX_FP16, fp16.sha256),
    }
    for key, relative in (extras or {}).items():
        artefacts[key] = _artefact(folder, relative)
    inputs, outputs = tensor_specs(model, size, volume=volume)
    probability_output, is_logits = "logits", True
    unseen: tuple[str, ...] | None = None
    limits: dict[str, tuple[float, float]] | None = None
    if isinstance(model, HipNet):
        heatmap = Heatmap(kind="interpretive-map", map_output="maps")
        probability_output, is_logits = "probabilities", False
    elif isinstance(model, OsteoporosisNet):
        # Pooled features through PCA and a nonlinear head: no linear map back to pixels.
        heatmap = Heatmap(kind="none")
        model.reduction().save(folder / REDUCTION)  # FeatureReduction.load reads it
        artefacts["reduction"] = _artefact(folder, REDUCTION)
        unseen = tuple(clinical[i] for i in model.head.unseen_clinical_columns())
        limits = _clinical_limits(model, clinical, unseen)
    else:
        branch = model.radiograph if isinstance(model, HipMultimodal) else model
        weight, bias = head_weights(branch)
        np.savez(folder / HEAD, weight=weight.numpy(), bias=bias.numpy())
        artefacts["head"] = _artefact(folder, HEAD)
        p = gem_exponent(branch)
        heatmap = Heatmap(
            kind="gradcam-gem" if p is not None else "gradcam-avg",
            features_output="features",
            logits_output="radiograph_logits" if isinstance(model, HipMultimodal) else "logits",
            head_artefact="head",
            gem_p=p,
        )
    if isinstance(model, HipMultimodal):
        artefacts.update(_text_encoder(folder))
    manifest = Manifest(
        name=spec.name,
        version=version,
        model=spec.model,
        model_kwargs=dict(model_kwargs or {}),
        title=spec.title,
        classes=classes,
        inputs=inputs,
        outputs=outputs,
        preprocessing=replace(
            base,
            size=size,
            volume=volume,
            clinical=tuple(clinical),
            clinical_unseen=unseen,
            clinical_limits=limits,
        ),
        heatmap=heatmap,
        artefacts=artefacts,
        probability_output=probability_output,
        output_is_logits=is_logits,
        training=dict(training or {}),
        evaluation=dict(evaluation or {}),
        clinical_use=clinical_use,
    )
    write_manifest(manifest, folder)
    return manifest


def _text_encoder(folder: Path) -> dict[str, Artefact]:
    """The packaged MiniLM encoder as ONNX with its tokenizer (engines.text_encoder)."""
    from engines.text_encoder import ONNX_FILENAME, TOKENIZER_FILENAME, export_text_encoder_onnx

    export_text_encoder_onnx(folder / TEXT_ENCODER_DIR)
    return {
        "text_encoder": _artefact(folder, f"{TEXT_ENCODER_DIR}/{ONNX_FILENAME}"),
        "text_tokenizer": _artefact(folder, f"{TEXT_ENCODER_DIR}/{TOKENIZER_FILENAME}"),
    }


def _artefact(folder: Path, name: str) -> Artefact:
    return Artefact(name, sha256_of(folder / name))


# How far from the training mean, in its standard deviations, a clinical value may lie and
# still be read (beyond: outside what the engine learnt from; read as missing).
CLINICAL_LIMIT_SDS = 4.0


def _clinical_limits(
    model: OsteoporosisNet, clinical: Sequence[str], unseen: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """Each numeric column's training range, mean +- CLINICAL_LIMIT_SDS SD, in natural units
    (the head's scaling is fitted on ClinicalVariables.as_vector's standardised values)."""
    from dicom_node.clinical import STANDARDISATION

    head = model.head
    mean = head.mean[head.image_width :].tolist()
    scale = head.scale[head.image_width :].tolist()
    limits = {}
    for n, name in enumerate(clinical):
        if name not in STANDARDISATION or name in unseen:
            continue  # a category column (sex), or one training never set
        centre, sd = STANDARDISATION[name]
        low, high = (mean[n] + k * CLINICAL_LIMIT_SDS * scale[n] for k in (-1, 1))
        limits[name] = (round(centre + sd * low, 3), round(centre + sd * high, 3))
    return limits
