"""DenseNet-121 (Huang et al., 2017): growth 32, blocks (6, 12, 24, 16), compression 0.5."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.models.base import Classifier, check_dropout
from engines.models.registry import register

_BLOCKS = (6, 12, 24, 16)
_GROWTH = 32
_BN_SIZE = 4
_INITIAL = 64
_FEATURES = 1024  # channels after the last dense block


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, drop_rate: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, _BN_SIZE * _GROWTH, 1, bias=False),
            nn.BatchNorm2d(_BN_SIZE * _GROWTH),
            nn.ReLU(inplace=True),
            nn.Conv2d(_BN_SIZE * _GROWTH, _GROWTH, 3, padding=1, bias=False),
            nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def _transition(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.AvgPool2d(2, stride=2),
    )


class DenseNet(Classifier):
    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        pool: str = "avg",
    ) -> None:
        super().__init__(num_classes, in_channels, _FEATURES, pool)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, _INITIAL, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(_INITIAL),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        channels = _INITIAL
        for index, count in enumerate(_BLOCKS):
            for _ in range(count):
                layers.append(DenseLayer(channels, check_dropout("drop_rate", drop_rate)))
                channels += _GROWTH
            if index < len(_BLOCKS) - 1:
                layers.append(_transition(channels, channels // 2))
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        # The reference implementation's initialisation (He-normal convolutions, zero
        # linear bias); PyTorch's default is a uniform of a sixth of that variance.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map after the final norm and ReLU, (N, 1024, H/32, W/32)."""
        features: Tensor = self.features(x)
        return features


@register("densenet121")
def densenet121(
    num_classes: int = 1000, in_channels: int = 3, drop_rate: float = 0.0, pool: str = "avg"
) -> DenseNet:
    return DenseNet(num_classes, in_channels, drop_rate, pool)
