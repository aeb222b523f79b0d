"""EfficientNet-B0 (Tan & Le, 2019): MBConv with squeeze-and-excitation, SiLU, 1280-wide head."""

from __future__ import annotations

import math

from torch import Tensor, nn

from engines.models.base import Classifier, check_dropout
from engines.models.registry import register

# (expand ratio, kernel, stride, output channels, repeats) per stage, as published for B0.
_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_STEM = 32
_HEAD = 1280


def _conv_bn_act(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=1e-3),
        nn.SiLU(inplace=True),
    ]


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        scale: Tensor = self.expand(self.act(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * scale.sigmoid()


class MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn_act(c_in, hidden, 1)
        layers += _conv_bn_act(hidden, hidden, kernel, stride, groups=hidden)
        # The squeeze ratio 0.25 is of the block's input channels, not the expanded ones.
        layers.append(SqueezeExcitation(hidden, max(1, c_in // 4)))
        layers += [nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out, eps=1e-3)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.block(x)
        return out + x if self.residual else out


class EfficientNet(Classifier):
    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2, pool: str = "avg"
    ) -> None:
        super().__init__(num_classes, in_channels, _HEAD, pool)
        layers: list[nn.Module] = list(_conv_bn_act(in_channels, _STEM, 3, stride=2))
        channels = _STEM
        for expand, kernel, stride, out, repeats in _STAGES:
            for r in range(repeats):
                layers.append(MBConv(channels, out, expand, kernel, stride if r == 0 else 1))
                channels = out
        layers += _conv_bn_act(channels, _HEAD, 1)
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(check_dropout("dropout", dropout))
        # torchvision's initialisation (He-normal over fan-out for convolutions, zero biases,
        # a uniform of 1/sqrt(classes) for the classifier). Its fan-out ignores the groups, so
        # depthwise kernels start smaller than in the TensorFlow reference; no stochastic
        # depth (docs/engines.md).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map after the 1280-channel head, (N, 1280, H/32, W/32)."""
        features: Tensor = self.features(x)
        return features


@register("efficientnet_b0")
def efficientnet_b0(
    num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2, pool: str = "avg"
) -> EfficientNet:
    return EfficientNet(num_classes, in_channels, dropout, pool)
