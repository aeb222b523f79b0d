"""The serving graph of each engine: named inputs in, named outputs out.

ONNX export and the torch runtime both run these wrappers, so every backend
sees the same tensors under the same names:

- classifiers (``hip_screen``): ``image`` -> ``logits``, ``features`` (the last
  feature map, for single-pass Grad-CAM);
- Hip-Net: ``ap``, ``lateral``, ``lateral_present`` -> ``probabilities``,
  ``maps`` (spatial per-class probability maps), ``pji_risk`` (0-100);
- the multimodal engine: ``radiograph``, ``ct`` (N, 1, D, H, W), ``text`` (N, 384
  sentence embedding), ``present`` (N, 3: radiograph, CT, text) -> ``logits`` (fused),
  ``radiograph_logits`` and ``features`` (the radiograph branch, for Grad-CAM),
  ``attention`` (N, 3: the weight of each modality);
- the osteoporosis engine: ``image``, ``clinical`` (N, F values as
  ``ClinicalVariables.as_vector(standardise=True)`` gives them: age, height, weight and BMI
  standardised with ``STANDARDISATION``, sex one-hot), ``missing`` (N, F of 0/1) ->
  ``logits``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.manifest import TensorSpec
from engines.models.base import Classifier
from engines.models.hip_multimodal import MODALITIES, HipMultimodal
from engines.models.hip_screen import HipScreen
from engines.models.hipnet import HipNet
from engines.models.layers import ArchitectureError, GeM
from engines.models.osteoporosis import OsteoporosisNet

CLASSIFIER_INPUTS = ("image",)
CLASSIFIER_OUTPUTS = ("logits", "features")
HIPNET_INPUTS = ("ap", "lateral", "lateral_present")
HIPNET_OUTPUTS = ("probabilities", "maps", "pji_risk")
MULTIMODAL_INPUTS = ("radiograph", "ct", "text", "present")
MULTIMODAL_OUTPUTS = ("logits", "radiograph_logits", "features", "attention")
OSTEOPOROSIS_INPUTS = ("image", "clinical", "missing")
OSTEOPOROSIS_OUTPUTS = ("logits",)
DEFAULT_VOLUME = (16, 32, 32)  # CT grid of example inputs when none is given


class ClassifierGraph(nn.Module):
    def __init__(self, model: Classifier | HipScreen) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_with_features(image)


class HipNetGraph(nn.Module):
    def __init__(self, model: HipNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, ap: Tensor, lateral: Tensor, lateral_present: Tensor) -> tuple[Tensor, ...]:
        outputs: tuple[Tensor, Tensor, Tensor] = self.model(ap, lateral, lateral_present)
        return outputs


class MultimodalGraph(nn.Module):
    def __init__(self, model: HipMultimodal) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, radiograph: Tensor, ct: Tensor, text: Tensor, present: Tensor
    ) -> tuple[Tensor, ...]:
        outputs: tuple[Tensor, Tensor, Tensor, Tensor] = self.model(radiograph, ct, text, present)
        return outputs


class OsteoporosisGraph(nn.Module):
    def __init__(self, model: OsteoporosisNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, clinical: Tensor, missing: Tensor) -> tuple[Tensor]:
        return (self.model(image, clinical, missing),)


def serving_graph(model: nn.Module) -> nn.Module:
    """Wrap an engine's network so that it takes and returns the named tensors."""
    if isinstance(model, HipNet):
        return HipNetGraph(model)
    if isinstance(model, HipMultimodal):
        return MultimodalGraph(model)
    if isinstance(model, OsteoporosisNet):
        return OsteoporosisGraph(model)
    if isinstance(model, Classifier | HipScreen):
        return ClassifierGraph(model)
    raise ArchitectureError(f"no serving graph for {type(model).__name__}")


# (network type, input names, output names); any other network is a classifier.
_NAMES: tuple[tuple[type[nn.Module], tuple[str, ...], tuple[str, ...]], ...] = (
    (HipNet, HIPNET_INPUTS, HIPNET_OUTPUTS),
    (HipMultimodal, MULTIMODAL_INPUTS, MULTIMODAL_OUTPUTS),
    (OsteoporosisNet, OSTEOPOROSIS_INPUTS, OSTEOPOROSIS_OUTPUTS),
)


def _names(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    for kind, inputs, outputs in _NAMES:
        if isinstance(model, kind):
            return inputs, outputs
    return CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS


def input_names(model: nn.Module) -> tuple[str, ...]:
    return _names(model)[0]


def output_names(model: nn.Module) -> tuple[str, ...]:
    return _names(model)[1]


def example_inputs(
    model: nn.Module,
    size: int,
    batch: int = 1,
    volume: tuple[int, int, int] | None = None,
) -> tuple[Tensor, ...]:
    """Zeros of the serving graph's input shapes; ``volume`` is the CT grid (D, H, W)."""
    channels = _in_channels(model)
    image = torch.zeros(batch, channels, size, size)
    if isinstance(model, HipNet):
        return image, image.clone(), torch.ones(batch)
    if isinstance(model, HipMultimodal):
        ct = torch.zeros(batch, 1, *(volume or DEFAULT_VOLUME))
        text = torch.zeros(batch, model.text_dim)
        return image, ct, text, torch.ones(batch, len(MODALITIES))
    if isinstance(model, OsteoporosisNet):
        width = model.head.clinical_width
        return image, torch.zeros(batch, width), torch.zeros(batch, width)
    return (image,)


def tensor_specs(
    model: nn.Module, size: int, volume: tuple[int, int, int] | None = None
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output specs with -1 for the batch axis (output shapes from a dry run)."""
    graph = serving_graph(model).eval()
    inputs = example_inputs(model, size, volume=volume)
    with torch.no_grad():
        outputs = graph(*inputs)
    return (
        tuple(_spec(n, t) for n, t in zip(input_names(model), inputs, strict=True)),
        tuple(_spec(n, t) for n, t in zip(output_names(model), outputs, strict=True)),
    )


def gem_exponent(model: nn.Module) -> float | None:
    """GeM's learned p when the classifier pools with GeM, else None (average pooling)."""
    classifier = model.backbone if isinstance(model, HipScreen) else model
    pool = getattr(classifier, "pool", None)
    return float(pool.p.detach().item()) if isinstance(pool, GeM) else None


def head_weights(model: nn.Module) -> tuple[Tensor, Tensor]:
    classifier = model.backbone if isinstance(model, HipScreen) else model
    if not isinstance(classifier, Classifier):
        raise ArchitectureError(f"{type(model).__name__} has no linear classifier head")
    return classifier.fc.weight.detach().clone(), classifier.fc.bias.detach().clone()


def _in_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    raise ArchitectureError(f"{type(model).__name__} has no convolution")


def _spec(name: str, tensor: Tensor) -> TensorSpec:
    return TensorSpec(name, (-1, *(int(d) for d in tensor.shape[1:])), "float32")
