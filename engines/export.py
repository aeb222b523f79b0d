"""ONNX export of an engine's serving graph, in fp32 and fp16.

Every engine exports its named inputs and outputs (see :mod:`engines.serving`)
with a dynamic batch axis: a classifier gives its logits and last feature map
(so Grad-CAM needs no gradients at serving time, see :mod:`engines.gradcam`),
Hip-Net its probabilities, probability maps and PJI risk. This uses torch's
TorchScript-based exporter (``dynamo=False``): the new exporter needs
onnxscript, which adds nothing here. fp16 uses ONNX Runtime's converter with
fp32 inputs and outputs kept, and GeM's power/clip kept in fp32 (x**3 of
feature values overflows half precision). :func:`check_fp16` runs both files on the
same inputs and refuses an fp16 copy whose outputs are not finite (activations past fp16's
range of 65504), so no runtime ever serves NaN from it, or drift from fp32's on the items
it is given.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dicom_node.errors import DicomNodeError, one_line
from engines.serving import example_inputs, input_names, output_names, serving_graph

OPSET = 17
# Kept in fp32 by the fp16 conversion: GeM's clamp, pow, mean and 1/p root, softmax, sigmoid.
FP16_KEEP_FP32 = ("Clip", "Pow", "Reciprocal", "ReduceMean", "Softmax", "Sigmoid", "Div", "Resize")
# How far an fp16 output may drift from fp32's: this share of the fp32 output's largest
# magnitude, and this much where that is under 1 (a probability: by 0.05 at most; was 0.05 of
# 1 + magnitude, which let a probability drift by 0.1). fp16 keeps ~3 significant digits; the
# demo engines' drift is ~5e-3 on logits, ~2e-4 on probabilities.
FP16_TOLERANCE = 0.05


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
        try:
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
        except RuntimeError as exc:  # a size the network cannot take, first of all
            # InceptionV3 under 75 px: torch's traceback ("Kernel size can't be greater
            # than actual input size") reached the command line.
            raise ExportError(
                f"cannot export at {size} px (too small for this network?): {one_line(str(exc))}"
            ) from exc
    return ExportedModel(path, sha256_of(path), inputs, outputs)


def check_fp16(
    fp32: Path,
    fp16: Path,
    inputs: Sequence[Tensor],
    names: Sequence[str],
    compared: Sequence[str] | None = None,
) -> None:
    """Run both ONNX files on ``inputs`` (items as serving feeds them: held-out images where
    the caller has them) and on seeded random images of their shapes; raise
    :class:`ExportError` when an fp16 output is not finite on either, or when one of
    ``compared`` (default: every output) drifts from fp32's on ``inputs``. Packaging
    compares the outputs findings are read from.

    Noise finds overflows (zeros alone may hide one); it is no measure of drift: on it an
    untrained-looking ensemble member saturates (logits of several hundred), two classes
    tie, and fp16's rounding flips the tie: a site-trained Hip-Net was refused at 0.25 on
    noise while its fp16 copy agreed with fp32 within 0.002 on its own hips."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # No graph rewrites: they may drop a Cast pair and compute an fp16 stretch in fp32 on the
    # CPU, hiding an overflow that a GPU running the same file would hit.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for p in (fp32, fp16)
    ]
    given = {n: t.detach().numpy() for n, t in zip(names, inputs, strict=True)}
    rng = np.random.default_rng(0)
    # Images (and volumes) as a normalised picture spreads: zeros alone may hide an overflow.
    noisy = {
        n: rng.standard_normal(a.shape).astype(a.dtype) if a.ndim >= 4 else a
        for n, a in given.items()
    }
    outputs = [o.name for o in sessions[0].get_outputs()]
    for feed in (given, noisy):
        full, half = (s.run(None, feed) for s in sessions)
        for name, a, b in zip(outputs, full, half, strict=True):
            if not np.all(np.isfinite(a)):
                raise ExportError(
                    f"{fp32.name}: output {name!r} is not finite in fp32 itself: the weights "
                    "are broken (a training run that diverged?)"
                )
            if not np.all(np.isfinite(b)):
                raise ExportError(
                    f"{fp16.name}: output {name!r} is not finite in fp16 (its activations "
                    "exceed fp16's range): recalibrate the BatchNorm statistics or keep "
                    "those layers in fp32"
                )
            if feed is noisy or (compared is not None and name not in compared):
                continue
            scale = float(np.max(np.abs(a))) if a.size else 0.0
            drift = float(np.max(np.abs(a - b))) if a.size else 0.0
            allowed = FP16_TOLERANCE * max(1.0, scale)
            if drift > allowed:
                raise ExportError(
                    f"{fp16.name}: output {name!r} differs from fp32 by {drift:.3g} "
                    f"(fp32 largest magnitude {scale:.3g}; at most {allowed:.3g} allowed)"
                )


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
