"""Warm start: a trained backbone's weights into every branch of the same architecture.

No ImageNet weights can be fetched here, so the demo Hip-Net starts its ResNet
branches from the demo screening engine's backbone, which was trained on hip
radiographs a moment earlier (the same idea as starting from a pretrained
network, with hips instead of ImageNet). A branch is warm-started only when
every one of its tensors, bar the classification head, has a namesake of the
same shape in the source: a ResNet-50 branch takes a ResNet-50 + CBAM backbone
without the CBAM gates, a DenseNet or EfficientNet branch takes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from engines.models.base import Classifier

HEAD = ("fc.", "pool.")  # the classifier's head stays as initialised


def backbone_state(state: Mapping[str, Tensor], prefix: str = "backbone.") -> dict[str, Tensor]:
    """The backbone tensors of a model's state dict, without ``prefix`` and the head."""
    return {
        key[len(prefix) :]: value
        for key, value in state.items()
        if key.startswith(prefix) and not key[len(prefix) :].startswith(HEAD)
    }


def warm_start(model: nn.Module, backbone: Mapping[str, Tensor]) -> dict[str, int]:
    """Copy ``backbone`` into every :class:`Classifier` inside ``model`` that it covers.

    Returns, per warm-started branch (its module path), the number of tensors copied.
    """
    started: dict[str, int] = {}
    for path, module in model.named_modules():
        if not isinstance(module, Classifier):
            continue
        own = {k: v for k, v in module.state_dict().items() if not k.startswith(HEAD)}
        if own and all(k in backbone and backbone[k].shape == v.shape for k, v in own.items()):
            module.load_state_dict({k: backbone[k] for k in own}, strict=False)
            started[path or "."] = len(own)
    return started
