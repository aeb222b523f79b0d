"""Building blocks shared by the backbones: GeM pooling, CBAM, average pooling."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from dicom_node.errors import DicomNodeError


class ArchitectureError(DicomNodeError, ValueError):
    """A model was asked for with arguments its architecture cannot take."""


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.) with a learnable exponent ``p``.

    ``p = 1`` is average pooling and ``p -> inf`` approaches max pooling. The
    input is clamped to ``eps`` so that fractional powers stay defined.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ArchitectureError(f"GeM exponent p must be positive, got {p}")
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        # A silent channel pools to eps**p, which underflows to 0 once p > ~6.4 in float32;
        # the root's slope in p is then 0 * log(0) = NaN. The floor keeps it finite.
        return pooled.clamp(min=torch.finfo(x.dtype).tiny).pow(1.0 / self.p)


class AvgPool(nn.Module):
    """Global average pooling to (N, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


def make_pool(pool: str) -> nn.Module:
    """The global pooling named by ``pool``: ``"avg"`` or ``"gem"``."""
    if pool == "avg":
        return AvgPool()
    if pool == "gem":
        return GeM()
    raise ArchitectureError(f"pool: expected 'avg' or 'gem', got {pool!r}")


class ChannelAttention(nn.Module):
    """CBAM's channel gate: a shared MLP over the average- and max-pooled descriptors.

    The MLP is two ``nn.Linear`` layers with bias, as in the authors' code.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def gate(self, x: Tensor) -> Tensor:
        """The attention weights, (N, C, 1, 1) in (0, 1)."""
        avg = self.mlp(x.mean(dim=(2, 3)))
        peak = self.mlp(x.amax(dim=(2, 3)))
        return torch.sigmoid(avg + peak)[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


def channel_mean_by_conv(x: Tensor) -> Tensor:
    """``x.mean(dim=1, keepdim=True)`` as a 1x1 convolution with weights 1/C.

    For ONNX export: at batch 1, ONNX Runtime's ReduceMean and ReduceMax over the
    channel axis of an NCHW tensor walk memory with a stride of H*W on one thread
    (~0.6 GB/s here, 30 ms for a 256x128x128 map); its convolution reads the same
    tensor at full speed at every batch size. Equal to the mean up to fp32
    summation order. ``int()`` of the channel count makes the kernel a constant of
    the traced graph (channels are static).
    """
    channels = int(x.shape[1])
    weight = torch.full((1, channels, 1, 1), 1.0 / channels, dtype=x.dtype, device=x.device)
    return functional.conv2d(x, weight)


def channel_max_by_folding(x: Tensor) -> Tensor:
    """``x.amax(dim=1, keepdim=True)`` as reductions over groups of 4 (or 2) adjacent channels.

    For ONNX export, for the same reason as :func:`channel_mean_by_conv`. Viewing
    (N, C, H, W) as (N, C/4, 4, H, W) and reducing the axis of 4 is the pattern ONNX
    Runtime runs fast at every batch size (parallel over N*C/4, contiguous over H*W);
    repeated until one channel is left. Whatever does not divide by 2 is reduced
    directly at the end. Exact (a maximum does not round).
    """
    channels, height, width = (int(size) for size in x.shape[1:])
    while channels % 2 == 0:
        group = 4 if channels % 4 == 0 else 2
        x = x.reshape(-1, channels // group, group, height, width).amax(dim=2)
        channels //= group
    return x if channels == 1 else x.amax(dim=1, keepdim=True)


class SpatialAttention(nn.Module):
    """CBAM's spatial gate: channel-wise average and max, a 7x7 conv with BatchNorm.

    Exported to ONNX, the two channel reductions are written as a convolution and
    folded maxima (same values; see :func:`channel_mean_by_conv`): the plain
    reductions took a third of the screening engine's ONNX Runtime time at batch 1.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        # As in the authors' code: conv without bias, then BatchNorm, no ReLU.
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def gate(self, x: Tensor) -> Tensor:
        """The attention map, (N, 1, H, W) in (0, 1)."""
        if torch.onnx.is_in_onnx_export():
            mean, peak = channel_mean_by_conv(x), channel_max_by_folding(x)
        else:
            mean, peak = x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
        pooled = torch.cat([mean, peak], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel, then spatial."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        refined: Tensor = self.spatial(self.channel(x))
        return refined
