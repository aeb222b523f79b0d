"""ONNX export of an engine's serving graph, in fp32 and fp16.

Every engine exports its named inputs and outputs (see :mod:`engines.serving`)
with a dynamic batch axis: a classifier gives its logits and last feature map
(so Grad-CAM needs no gradients at serving time, see :mod:`engines.gradcam`),
Hip-Net its probabilities, probability maps and PJI risk. This uses torch's
TorchScript-based exporter (``dynamo=False``): the new exporter needs
onnxscript, which adds nothing here. fp16 uses ONNX Runtime's converter with
fp32 inputs and outputs kept, and GeM's power/clip kept in fp32 (x**3 of
feature values overflows half precision).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dicom_node.errors import DicomNodeError
from engines.serving import example_inputs, input_names, output_names, serving_graph

OPSET = 17
# Kept in fp32 by the fp16 conversion: GeM's clamp, pow, mean and 1/p root, softmax, sigmoid.
FP16_KEEP_FP32 = ("Clip", "Pow", "Reciprocal", "ReduceMean", "Softmax", "Sigmoid", "Div", "Resize")


class ExportError(DicomNodeError, RuntimeError):
    """ONNX export or conversion failed."""


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    sha256: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(
    model: nn.Module,
    path: Path,
    size: int,
    opset: int = OPSET,
    volume: tuple[int, int, int] | None = None,
) -> ExportedModel:
    """Write ``model``'s serving graph (in eval mode) to ``path`` as fp32 ONNX.

    ``volume`` is the CT grid (D, H, W) of an engine with a CT input.
    """
    if opset < 17:
        raise ExportError(f"opset: expected 17 or newer, got {opset}")
    graph = serving_graph(model).eval()
    inputs, outputs = input_names(model), output_names(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # torch announces that the TorchScript exporter is legacy; it is chosen on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        # The attention fusion's shape checks are Python conditions the tracer warns about;
        # the exported graph is checked against torch by the parity tests.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        torch.onnx.export(
            graph,
            example_inputs(model, size, batch=2, volume=volume),
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={name: batch for name in (*inputs, *outputs)},
            opset_version=opset,
            dynamo=False,
        )
    return ExportedModel(path, sha256_of(path), inputs, outputs)


def convert_fp16(source: Path, target: Path) -> ExportedModel:
    """An fp16 copy of an fp32 ONNX file; inputs and outputs stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    with warnings.catch_warnings():
        # The converter warns about values it clamps into the fp16 range.
        warnings.simplefilter("ignore", UserWarning)
        half = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(FP16_KEEP_FP32)
        )
    onnx.save(half, str(target))
    names_in = tuple(i.name for i in half.graph.input)
    names_out = tuple(o.name for o in half.graph.output)
    return ExportedModel(target, sha256_of(target), names_in, names_out)
