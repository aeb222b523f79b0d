"""Inception-v3 (Szegedy et al., 2016, "Rethinking the Inception Architecture").

The layout and names of the reference implementation (torchvision's ``Inception3``):
``Conv2d_1a_3x3`` ... ``Conv2d_4a_3x3``, ``Mixed_5b`` ... ``Mixed_7c`` built of
InceptionA-E blocks, each convolution a ``BasicConv2d`` (convolution without bias,
BatchNorm with eps 0.001, ReLU), and the optional auxiliary classifier ``AuxLogits`` on
``Mixed_6e``. The standard model (1000 classes, 3 channels) has 27,161,264 parameters with
the auxiliary classifier and 23,834,568 without it; the module names match torchvision's,
so with 3 channels and average pooling a torchvision state dict loads as it is.

The head is the shared pool -> dropout (0.5) -> linear on the 2048-channel ``Mixed_7c``
map, so any input from 75x75 up works (8x8 map at 299x299, 1x1 from 75x75 to 106x106).
The auxiliary classifier is the reference's, which needs inputs of at least 299x299; it is
off by default and its logits come from :meth:`Inception3.forward_with_aux` (training adds
them to the loss, weight 0.4 in the paper); ``forward`` always returns the main logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from engines.models.base import Classifier, check_dropout
from engines.models.registry import register

_FEATURES = 2048
_INIT_STD = 0.1  # the reference's truncated-normal init; the auxiliary head uses less


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 0.001), ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        init_std: float = _INIT_STD,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.init_std = init_std

    def forward(self, x: Tensor) -> Tensor:
        return functional.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = self.branch_pool(functional.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, pooled], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: strided 3x3, strided double 3x3, max-pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = functional.max_pool2d(x, 3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, pooled], dim=1)


class InceptionC(nn.Module):
    """17x17 block with 7x7 convolutions factorised into 1x7 and 7x1."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        dbl = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            dbl = layer(dbl)
        pooled = self.branch_pool(functional.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), branch7x7, dbl, pooled], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: strided 3x3, 7x7-then-strided-3x3, max-pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        pooled = functional.max_pool2d(x, 3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, pooled], dim=1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks: 3x3 split into parallel 1x3 and 3x1."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], dim=1)
        pooled = self.branch_pool(functional.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, pooled], dim=1)


class InceptionAux(nn.Module):
    """The auxiliary classifier on the 17x17 map (needs at least 299x299 inputs)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, 1)
        self.conv1 = BasicConv2d(128, 768, 5, init_std=0.01)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(functional.avg_pool2d(x, 5, stride=3)))
        logits: Tensor = self.fc(torch.flatten(functional.adaptive_avg_pool2d(x, 1), 1))
        return logits


class Inception3(Classifier):
    """Inception-v3; ``forward_features`` runs the stem and every mixed block."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        aux_logits: bool = False,
        dropout: float = 0.5,
        pool: str = "avg",
    ) -> None:
        super().__init__(num_classes, in_channels, _FEATURES, pool)
        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.dropout = nn.Dropout(check_dropout("dropout", dropout))
        # The reference's initialisation: truncated normal (std 0.1; 0.01 for the auxiliary
        # 5x5 convolution, 0.001 for its linear layer), BatchNorm to the identity.
        for module in self.modules():
            if isinstance(module, BasicConv2d):
                nn.init.trunc_normal_(module.conv.weight, std=module.init_std, a=-2.0, b=2.0)
                nn.init.ones_(module.bn.weight)
                nn.init.zeros_(module.bn.bias)
            elif isinstance(module, InceptionAux):
                nn.init.trunc_normal_(module.fc.weight, std=0.001, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.fc.weight, std=_INIT_STD, a=-2.0, b=2.0)

    def _to_mixed_6e(self, x: Tensor) -> Tensor:
        """Stem and the 35x35 and 17x17 blocks: (N, 768, 17, 17) at 299x299."""
        for layer in (
            self.Conv2d_1a_3x3,
            self.Conv2d_2a_3x3,
            self.Conv2d_2b_3x3,
            self.maxpool1,
            self.Conv2d_3b_1x1,
            self.Conv2d_4a_3x3,
            self.maxpool2,
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
        ):
            x = layer(x)
        return x

    def _from_mixed_6e(self, x: Tensor) -> Tensor:
        features: Tensor = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return features

    def forward_features(self, x: Tensor) -> Tensor:
        """``Mixed_7c``'s map, (N, 2048, 8, 8) at 299x299 and (N, 2048, 1, 1) at 75x75."""
        return self._from_mixed_6e(self._to_mixed_6e(x))

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The main logits and the auxiliary classifier's (None without ``aux_logits``)."""
        mixed_6e = self._to_mixed_6e(x)
        logits: Tensor = self.fc(self.dropout(self.pool(self._from_mixed_6e(mixed_6e))))
        aux = self.AuxLogits(mixed_6e) if self.AuxLogits is not None else None
        return logits, aux


@register("inception_v3")
def inception_v3(
    num_classes: int = 1000,
    in_channels: int = 3,
    aux_logits: bool = False,
    dropout: float = 0.5,
    pool: str = "avg",
) -> Inception3:
    """Inception-v3: 23,834,568 parameters as standard, 27,161,264 with ``aux_logits``."""
    return Inception3(num_classes, in_channels, aux_logits, dropout, pool)
