"""ONNX export of a classifier with two outputs: the logits and the last feature map.

The feature map is an output so that Grad-CAM needs no gradients at serving
time (see :mod:`engines.gradcam`). The batch axis is dynamic. This uses torch's
TorchScript-based exporter (``dynamo=False``): the new exporter needs
onnxscript, which adds nothing here.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from engines.models.base import Classifier

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "features")


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    sha256: str
    input_name: str
    output_names: tuple[str, ...]
    input_shape: tuple[int, int, int]


class _WithFeatures(nn.Module):
    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_with_features(x)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_classifier(
    model: Classifier, path: Path, input_shape: tuple[int, int, int], opset: int = OPSET
) -> ExportedModel:
    """Write ``model`` (in eval mode) to ``path`` as ONNX; return what a manifest records."""
    wrapper = _WithFeatures(model).eval()
    example = torch.zeros(1, *input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {0: "batch"}
    with warnings.catch_warnings():
        # torch announces that the TorchScript exporter is legacy; it is chosen on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: batch, OUTPUT_NAMES[0]: batch, OUTPUT_NAMES[1]: batch},
            opset_version=opset,
            dynamo=False,
        )
    return ExportedModel(path, sha256_of(path), INPUT_NAME, OUTPUT_NAMES, input_shape)
