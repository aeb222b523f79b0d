"""3D ResNet-50: the reference implementation's parameter count, layout and volume shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.models import available, create
from engines.models.base import create_classifier
from engines.models.layers import ArchitectureError
from engines.models.resnet3d import Bottleneck3d, GeM3d, GlobalAvgPool3d, ResNet3d, resnet3d50

# Counted from the authors' reference code (kenshohara/3D-ResNets-PyTorch, models/resnet.py:
# resnet50, shortcut B, n_classes=400, 3 input channels), which this model reproduces layer
# for layer. It equals torchvision's 2D ResNet-50 (25,557,032) with the 7x7 stem and every
# 3x3 convolution inflated along depth (+56,448 and +22,634,496) and a 400-class head
# (-1,229,400). No published integer was found to compare with (46,237,904, once quoted
# for this model, matches no configuration of the reference code).
KINETICS_PARAMS = 47_018_576
# The same with one input channel (the CT default): the stem loses 2 * 64 * 7**3 weights.
CT_PARAMS = KINETICS_PARAMS - 2 * 64 * 7**3


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def ct() -> ResNet3d:
    torch.manual_seed(0)
    return resnet3d50(num_classes=4).eval()


@pytest.fixture(scope="module")
def outputs(ct: ResNet3d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.rand(1, 1, 32, 64, 64)
    with torch.no_grad():
        logits, features = ct.forward_with_features(x)
    return x, logits, features


def test_parameter_counts_match_the_reference() -> None:
    with torch.device("meta"):
        kinetics = resnet3d50(num_classes=400, in_channels=3)
        default = resnet3d50()
    assert count(kinetics) == KINETICS_PARAMS
    assert count(default) == CT_PARAMS
    assert default.fc.out_features == 400


def test_reference_layout(ct: ResNet3d) -> None:
    conv1 = ct.stem[0]
    assert isinstance(conv1, nn.Conv3d)
    assert conv1.in_channels == 1 and conv1.out_channels == 64
    assert conv1.kernel_size == (7, 7, 7)
    assert conv1.stride == (1, 2, 2) and conv1.padding == (3, 3, 3)
    assert conv1.bias is None
    pool = ct.stem[3]
    assert isinstance(pool, nn.MaxPool3d) and (pool.kernel_size, pool.stride) == (3, 2)
    stages = [s for s in ct.stages if isinstance(s, nn.Sequential)]
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]
    blocks = [b for b in ct.modules() if isinstance(b, Bottleneck3d)]
    firsts = [stage[0] for stage in stages]
    assert [b.conv2.stride for b in firsts] == [(1, 1, 1)] + [(2, 2, 2)] * 3
    assert all(b.conv2.kernel_size == (3, 3, 3) for b in blocks)
    # Shortcut B: a projection only where the shape changes (the first block of each stage).
    projected = [b for b in blocks if isinstance(b.downsample, nn.Sequential)]
    assert projected == firsts
    for block in projected:
        assert isinstance(block.downsample, nn.Sequential)
        conv, bn = block.downsample[0], block.downsample[1]
        assert isinstance(conv, nn.Conv3d) and conv.kernel_size == (1, 1, 1)
        assert isinstance(bn, nn.BatchNorm3d)


def test_volume_gives_logits_and_the_last_feature_map(
    ct: ResNet3d, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    x, logits, features = outputs
    assert logits.shape == (1, 4)
    assert features.shape == (1, 2048, 2, 2, 2)  # D/16, H/32, W/32
    assert ct.num_features == 2048
    assert float(features.min()) >= 0.0
    with torch.no_grad():
        assert torch.allclose(ct(x), logits)
        expected = ct.fc(features.mean(dim=(2, 3, 4)))
    assert torch.allclose(logits, expected, atol=1e-6)
    assert isinstance(ct.pool, GlobalAvgPool3d)


def test_gem_pools_over_three_axes() -> None:
    pool = GeM3d()
    features = torch.rand(2, 8, 2, 3, 4) + 0.1
    expected = features.pow(3).mean(dim=(2, 3, 4)).pow(1 / 3)
    assert torch.allclose(pool(features).detach(), expected, atol=1e-6)
    model = create("resnet3d50", num_classes=2, pool="gem")
    assert isinstance(model.pool, GeM3d)


def test_registered_and_checked() -> None:
    assert "resnet3d50" in available()
    with torch.device("meta"):
        model = create_classifier("resnet3d50", num_classes=4)
    assert isinstance(model, ResNet3d) and model.num_features == 2048
    with pytest.raises(ArchitectureError, match=r"pool: expected 'avg' or 'gem', got 'max'"):
        create("resnet3d50", pool="max")
    with pytest.raises(ArchitectureError, match=r"got 4 and 0"):
        create("resnet3d50", num_classes=4, in_channels=0)
