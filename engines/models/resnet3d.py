"""3D ResNet-50 (Hara, Kataoka & Satoh, CVPR 2018) for volumes (N, C, D, H, W), e.g. CT.

As in the authors' reference implementation (kenshohara/3D-ResNets-PyTorch,
``models/resnet.py``): a 7x7x7 stem convolution with stride (1, 2, 2) and padding 3, a
3x3x3 max-pool with stride 2, bottlenecks (3, 4, 6, 3) of 1x1x1 -> 3x3x3 (carries the
stride, which is 2 along all three axes from the second stage on) -> 1x1x1 with expansion
4, shortcut type B (a strided 1x1x1 convolution with BatchNorm where the shape changes,
the identity elsewhere), global average pooling and a linear layer. The standard
configuration (400 Kinetics classes, 3 channels) has 47,018,576 parameters.

The default here is one channel, for CT. ``forward_features`` gives the last feature map,
(N, 2048, D/16, H/32, W/32) (rounded up); the head is pool -> dropout -> linear as in the
other families, with the pooling over the three axes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.models.base import Classifier
from engines.models.layers import GeM
from engines.models.registry import register

_LAYERS = (3, 4, 6, 3)
_EXPANSION = 4


class Bottleneck3d(nn.Module):
    """1x1x1 reduce, 3x3x3 (carries the stride), 1x1x1 expand; type-B shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * _EXPANSION
        self.conv1 = nn.Conv3d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: Tensor = self.relu(out + self.downsample(x))
        return result


class GlobalAvgPool3d(nn.Module):
    """Global average pooling of (N, C, D, H, W) to (N, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3, 4))


class GeM3d(GeM):
    """GeM (see :class:`engines.models.layers.GeM`) over depth, height and width."""

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3, 4))
        return pooled.clamp(min=torch.finfo(x.dtype).tiny).pow(1.0 / self.p)


class ResNet3d(Classifier):
    """3D ResNet-50; ``forward_features`` is the stem and the four stages."""

    def __init__(self, num_classes: int = 400, in_channels: int = 1, pool: str = "avg") -> None:
        super().__init__(num_classes, in_channels, 512 * _EXPANSION, pool)
        self.pool = GlobalAvgPool3d() if pool == "avg" else GeM3d()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, 64, 7, stride=(1, 2, 2), padding=3, bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        channels = 64
        for index, blocks in enumerate(_LAYERS):
            width = 64 * 2**index
            stride = 1 if index == 0 else 2
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck3d(channels, width, stride if b == 0 else 1))
                channels = width * _EXPANSION
            stages.append(nn.Sequential(*layer))
        self.stages = nn.Sequential(*stages)
        # The reference's initialisation; its linear layer keeps torch's default.
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, (N, 2048, D/16, H/32, W/32), each rounded up."""
        features: Tensor = self.stages(self.stem(x))
        return features


@register("resnet3d50")
def resnet3d50(num_classes: int = 400, in_channels: int = 1, pool: str = "avg") -> ResNet3d:
    """3D ResNet-50 (shortcut B); 47,018,576 parameters with 400 classes and 3 channels."""
    return ResNet3d(num_classes, in_channels, pool)
