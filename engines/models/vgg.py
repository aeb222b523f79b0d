"""VGG19 (Simonyan & Zisserman, 2015, configuration E), optionally with BatchNorm (vgg19_bn).

Sixteen 3x3 convolutions in five blocks (2, 2, 4, 4, 4 layers of 64, 128, 256, 512, 512
channels), each block closed by a 2x2 max-pool, then the paper's classifier: the map
pooled adaptively to 7x7 (whatever the input size), flattened, and three fully connected
layers 4096 -> 4096 -> classes with ReLU and dropout between them, as in the reference
implementation (torchvision's ``vgg19``: 143,667,240 parameters as standard, ``vgg19_bn``
143,678,248). The adaptive pooling is written as two averaging matrices so that ONNX
export works for inputs whose map does not divide into 7x7 (e.g. 64 pixels, a 2x2 map).

``forward_features`` is the output of the last block (after its max-pool),
(N, 512, H/32, W/32), like the other families. The head is not a single linear layer
(``fc`` here is the last of the three fully connected layers, on 4096 inputs), so the
single-pass Grad-CAM of :mod:`engines.gradcam` does not apply to it; autograd Grad-CAM
on the feature map does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.models.base import Classifier, check_dropout
from engines.models.registry import register

# Configuration E: output channels of each 3x3 convolution, "M" for a 2x2 max-pool.
_CONFIG_E: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)  # fmt: skip
_FEATURES = 512
_POOLED = 7  # the classifier sees a 7x7 map whatever the input size
_HIDDEN = 4096


def _averaging(size: int, out: int, like: Tensor) -> Tensor:
    """(out, size): row i averages the cells of adaptive pooling's bin i, as torch sets them.

    Tensor arithmetic throughout, so that a traced export follows the input's size.
    """
    cells = torch.arange(size, device=like.device)
    bins = torch.arange(out, device=like.device)
    start = torch.div(bins * size, out, rounding_mode="floor")
    end = -torch.div(-(bins + 1) * size, out, rounding_mode="floor")  # ceiling
    inside = (cells[None, :] >= start[:, None]) & (cells[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(size)`` as two averaging matrices: the same bins and values.

    torch's ONNX exporter refuses adaptive pooling to a size that does not divide the
    input (VGG's 7x7 from the 2x2 map of a 64-pixel image), a matrix product it takes.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        rows = _averaging(x.shape[-2], self.size, x)
        cols = _averaging(x.shape[-1], self.size, x)
        return rows @ x @ cols.T


def _blocks(in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in _CONFIG_E:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
            continue
        out = int(item)
        layers.append(nn.Conv2d(channels, out, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers)


class VGG(Classifier):
    """VGG19; ``forward_with_features`` gives the logits and the last block's map."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(num_classes, in_channels, _FEATURES, "avg")
        rate = check_dropout("dropout", dropout)
        self.features = _blocks(in_channels, batch_norm)
        self.pool = nn.Sequential(AdaptiveAvgPool(_POOLED), nn.Flatten(1))
        self.classifier = nn.Sequential(
            nn.Linear(_FEATURES * _POOLED * _POOLED, _HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(rate),
            nn.Linear(_HIDDEN, _HIDDEN),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(rate)
        self.fc = nn.Linear(_HIDDEN, num_classes)
        # The reference implementation's initialisation.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def drop_fully_connected(self) -> None:
        """Replace fc6 and fc7 (~120 M of the 143.7 M parameters) by nothing: the logits then
        come from the pooled last block through one linear layer. For feature extractors
        that use only the convolutional features (the osteoporosis engine)."""
        self.classifier = nn.Identity()  # type: ignore[assignment]
        self.fc = nn.Linear(_FEATURES * _POOLED * _POOLED, self.fc.out_features)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last block's map after its max-pool, (N, 512, H/32, W/32)."""
        features: Tensor = self.features(x)
        return features

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.forward_features(x)
        logits: Tensor = self.fc(self.dropout(self.classifier(self.pool(features))))
        return logits, features


@register("vgg19")
def vgg19(
    num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = False, dropout: float = 0.5
) -> VGG:
    """VGG19, 143,667,240 parameters as standard; ``batch_norm=True`` is vgg19_bn."""
    return VGG(num_classes, in_channels, batch_norm, dropout)
