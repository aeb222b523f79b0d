"""ResNet-50 (He et al., 2016; stride on the 3x3 convolution, "v1.5"), optionally with CBAM.

With ``cbam=True`` a CBAM module refines the residual branch of every
bottleneck before the addition, as in the CBAM paper. ``pool`` chooses
global average or GeM pooling before the linear head.
"""

from __future__ import annotations

from torch import Tensor, nn

from engines.models.base import Classifier
from engines.models.layers import CBAM
from engines.models.registry import register

_LAYERS = (3, 4, 6, 3)
_EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand; CBAM on the branch if asked."""

    def __init__(self, in_channels: int, width: int, stride: int, cbam: bool) -> None:
        super().__init__()
        out_channels = width * _EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.attention: nn.Module = CBAM(out_channels) if cbam else nn.Identity()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attention(self.bn3(self.conv3(out)))
        result: Tensor = self.relu(out + self.downsample(x))
        return result


class ResNet(Classifier):
    """ResNet-50; ``forward_features`` is the stem and the four stages."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        cbam: bool = False,
        pool: str = "avg",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(num_classes, in_channels, 512 * _EXPANSION, pool)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        channels = 64
        for index, blocks in enumerate(_LAYERS):
            width = 64 * 2**index
            stride = 1 if index == 0 else 2
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(channels, width, stride if b == 0 else 1, cbam))
                channels = width * _EXPANSION
            stages.append(nn.Sequential(*layer))
        self.stages = nn.Sequential(*stages)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each block then starts as the identity (Goyal et al., 2017), which helps
            # large-batch training; the CBAM gates still see the zeroed branch.
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, (N, 2048, H/32, W/32)."""
        features: Tensor = self.stages(self.stem(x))
        return features


@register("resnet50")
def resnet50(
    num_classes: int = 1000,
    in_channels: int = 3,
    pool: str = "avg",
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50, 25,557,032 parameters in the standard configuration."""
    return ResNet(num_classes, in_channels, False, pool, zero_init_residual)


@register("resnet50_cbam")
def resnet50_cbam(
    num_classes: int = 1000,
    in_channels: int = 3,
    pool: str = "avg",
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50 with CBAM in all 16 bottlenecks, 28,089,624 parameters as standard."""
    return ResNet(num_classes, in_channels, True, pool, zero_init_residual)
