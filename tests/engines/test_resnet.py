"""ResNet-50 and ResNet-50 + CBAM: parameter counts, shapes, block layout and options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.models.layers import CBAM, ArchitectureError, AvgPool, GeM
from engines.models.resnet import Bottleneck, ResNet, resnet50, resnet50_cbam

# torchvision's published count for resnet50; the CBAM one is ours, exactly: the
# paper (Woo et al., 2018, Table 3) reports 28.09M.
RESNET50_PARAMS = 25_557_032
RESNET50_CBAM_PARAMS = 28_089_624
CBAM_PAPER = 28.09e6


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def plain() -> ResNet:
    return resnet50().eval()


@pytest.fixture(scope="module")
def with_cbam() -> ResNet:
    return resnet50_cbam().eval()


def test_parameter_counts(plain: ResNet, with_cbam: ResNet) -> None:
    assert count(plain) == RESNET50_PARAMS
    assert count(with_cbam) == RESNET50_CBAM_PARAMS
    assert abs(RESNET50_CBAM_PARAMS - CBAM_PAPER) / CBAM_PAPER < 0.005


def test_standard_input(with_cbam: ResNet) -> None:
    with torch.no_grad():
        logits, features = with_cbam.forward_with_features(torch.rand(1, 3, 224, 224))
    assert logits.shape == (1, 1000)
    assert features.shape == (1, 2048, 7, 7)
    assert with_cbam.num_features == 2048
    assert isinstance(with_cbam.fc, nn.Linear) and with_cbam.fc.in_features == 2048


def test_non_square_single_channel_input() -> None:
    model = resnet50(num_classes=3, in_channels=1, pool="gem").eval()
    with torch.no_grad():
        logits, features = model.forward_with_features(torch.rand(2, 1, 256, 192))
        plain_logits = model(torch.rand(1, 1, 64, 64))
    assert logits.shape == (2, 3) and plain_logits.shape == (1, 3)
    assert features.shape == (2, 2048, 8, 6)
    assert isinstance(model.pool, GeM)


def test_stride_is_on_the_3x3_convolution(plain: ResNet) -> None:
    stages = [s for s in plain.stages if isinstance(s, nn.Sequential)]
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]
    firsts = [b for b in (stage[0] for stage in stages) if isinstance(b, Bottleneck)]
    assert [b.conv2.stride for b in firsts] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert all(b.conv1.stride == (1, 1) for b in firsts)
    assert isinstance(plain.pool, AvgPool)


def test_cbam_is_in_every_block(plain: ResNet, with_cbam: ResNet) -> None:
    blocks = [m for m in with_cbam.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    assert all(isinstance(b.attention, CBAM) for b in blocks)
    assert not any(isinstance(m, CBAM) for m in plain.modules())


def test_cbam_refines_the_branch_before_the_addition() -> None:
    block = Bottleneck(64, 16, 1, cbam=True).eval()
    assert isinstance(block.attention, CBAM)
    last = block.attention.channel.mlp[2]
    assert isinstance(last, nn.Linear)
    # With the branch gated to zero, only the shortcut is left.
    nn.init.zeros_(last.weight)
    nn.init.constant_(last.bias, -1e4)
    x = torch.rand(2, 64, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), x)


def test_zero_init_residual_starts_blocks_as_identity() -> None:
    model = resnet50(zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert all(bool((b.bn3.weight == 0).all()) for b in blocks)
    block = blocks[1].eval()  # no downsampling
    x = torch.rand(1, 256, 4, 4)
    with torch.no_grad():
        assert torch.allclose(block(x), x)
    assert all(
        bool((b.bn3.weight == 1).all()) for b in resnet50().modules() if isinstance(b, Bottleneck)
    )


def test_invalid_arguments_are_project_errors() -> None:
    with pytest.raises(ArchitectureError, match=r"pool: expected 'avg' or 'gem', got 'max'"):
        resnet50_cbam(pool="max")
    with pytest.raises(
        ArchitectureError, match=r"num_classes and in_channels must be >= 1, got 3 and 0"
    ):
        resnet50(num_classes=3, in_channels=0)
