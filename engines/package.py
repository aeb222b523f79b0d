"""Package a trained network as an engine folder: checkpoint, ONNX fp32/fp16, head, manifest.

The folder is self-contained and relocatable (paths in the manifest are
relative); its manifest records the SHA-256 of every artefact.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.catalog import EngineSpec
from engines.export import convert_fp16, export_onnx, sha256_of
from engines.manifest import Artefact, Heatmap, Manifest, Preprocessing, write_manifest
from engines.models.hipnet import HipNet
from engines.serving import gem_exponent, head_weights, tensor_specs

CHECKPOINT = "model.pt"
ONNX_FP32 = "model.onnx"
ONNX_FP16 = "model-fp16.onnx"
HEAD = "head.npz"


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
) -> Manifest:
    """Write every artefact of ``model`` into ``folder`` and return the manifest written."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    torch.save(model.state_dict(), folder / CHECKPOINT)
    fp32 = export_onnx(model, folder / ONNX_FP32, size)
    fp16 = convert_fp16(fp32.path, folder / ONNX_FP16)
    artefacts = {
        "checkpoint": _artefact(folder, CHECKPOINT),
        "onnx_fp32": Artefact(ONNX_FP32, fp32.sha256),
        "onnx_fp16": Artefact(ONNX_FP16, fp16.sha256),
    }
    inputs, outputs = tensor_specs(model, size)
    if isinstance(model, HipNet):
        heatmap = Heatmap(kind="interpretive-map", map_output="maps")
        probability_output, is_logits = "probabilities", False
    else:
        weight, bias = head_weights(model)
        np.savez(folder / HEAD, weight=weight.numpy(), bias=bias.numpy())
        artefacts["head"] = _artefact(folder, HEAD)
        p = gem_exponent(model)
        heatmap = Heatmap(
            kind="gradcam-gem" if p is not None else "gradcam-avg",
            features_output="features",
            logits_output="logits",
            head_artefact="head",
            gem_p=p,
        )
        probability_output, is_logits = "logits", True
    manifest = Manifest(
        name=spec.name,
        version=version,
        model=spec.model,
        model_kwargs=dict(model_kwargs or {}),
        title=spec.title,
        classes=spec.findings,
        inputs=inputs,
        outputs=outputs,
        preprocessing=Preprocessing(size=size),
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


def _artefact(folder: Path, name: str) -> Artefact:
    return Artefact(name, sha256_of(folder / name))
