"""EfficientNet-B0: the published stage table, the feature-map interface and argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.models import create
from engines.models.efficientnet import EfficientNet, MBConv, SqueezeExcitation, efficientnet_b0
from engines.models.layers import ArchitectureError, AvgPool, GeM

TORCHVISION_PARAMS = 5_288_548  # torchvision efficientnet_b0; 5.3M in Tan & Le (2019)
# (expand, kernel, stride, out channels, repeats) as in Tan & Le (2019), Table 1.
B0 = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def standard() -> EfficientNet:
    return efficientnet_b0().eval()


def test_registered_constructor_builds_the_reference_count(standard: EfficientNet) -> None:
    assert isinstance(create("efficientnet_b0"), EfficientNet)
    assert count(standard) == TORCHVISION_PARAMS


def depthwise(block: MBConv) -> nn.Conv2d:
    convs = [m for m in block.block if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(convs) == 1
    return convs[0]


def test_initialisation_follows_the_reference(standard: EfficientNet) -> None:
    # He-normal over fan-out for convolutions, zero conv biases (squeeze-excitation),
    # a uniform of 1/sqrt(classes) and zero bias for the classifier.
    convs = [m for m in standard.modules() if isinstance(m, nn.Conv2d)]
    big = max(convs, key=lambda m: m.weight.numel())
    fan_out = big.out_channels * big.kernel_size[0] * big.kernel_size[1] // big.groups
    assert float(big.weight.detach().std()) == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in convs if m.bias is not None)
    bound = 1.0 / 1000**0.5
    assert float(standard.fc.weight.detach().abs().max()) <= bound
    assert float(standard.fc.weight.detach().abs().max()) > 0.9 * bound
    assert float(standard.fc.bias.detach().abs().max()) == 0.0


def test_blocks_follow_the_b0_stage_table(standard: EfficientNet) -> None:
    blocks = [m for m in standard.features if isinstance(m, MBConv)]
    expected = [
        (expand, kernel, stride if r == 0 else 1, out)
        for expand, kernel, stride, out, repeats in B0
        for r in range(repeats)
    ]
    assert len(blocks) == len(expected) == 16
    c_in = 32
    for block, (expand, kernel, stride, out) in zip(blocks, expected, strict=True):
        conv = depthwise(block)
        assert conv.in_channels == c_in * expand
        assert conv.kernel_size == (kernel, kernel)
        assert conv.stride == (stride, stride)
        se = next(m for m in block.modules() if isinstance(m, SqueezeExcitation))
        assert se.reduce.out_channels == max(1, c_in // 4)  # 0.25 of the block input
        assert block.residual == (stride == 1 and c_in == out)
        c_in = out


def test_standard_input_gives_logits_and_a_7x7_map(standard: EfficientNet) -> None:
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        logits, features = standard.forward_with_features(x)
        plain = standard(x)
    assert logits.shape == (2, 1000)
    assert features.shape == (2, 1280, 7, 7)
    assert torch.allclose(logits, plain)
    assert torch.allclose(standard.forward_features(x), features)


def test_head_is_pool_dropout_linear(standard: EfficientNet) -> None:
    assert standard.num_features == 1280
    assert isinstance(standard.pool, AvgPool)
    assert isinstance(standard.dropout, nn.Dropout) and standard.dropout.p == 0.2
    assert isinstance(standard.fc, nn.Linear)
    assert (standard.fc.in_features, standard.fc.out_features) == (1280, 1000)
    assert isinstance(standard.features[-1], nn.SiLU)


def test_single_channel_non_square_input() -> None:
    model = create("efficientnet_b0", num_classes=2, in_channels=1).eval()
    with torch.no_grad():
        logits, features = model.forward_with_features(torch.rand(1, 1, 160, 96))
    assert logits.shape == (1, 2)
    assert features.shape == (1, 1280, 5, 3)


def test_gem_pool_has_a_learnable_exponent() -> None:
    model = create("efficientnet_b0", num_classes=2, pool="gem")
    assert isinstance(model.pool, GeM)
    assert float(model.pool.p.detach()) == 3.0
    assert count(model) == count(create("efficientnet_b0", num_classes=2)) + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, r"num_classes and in_channels must be >= 1, got 0 and 3"),
        ({"in_channels": 0}, r"num_classes and in_channels must be >= 1, got 1000 and 0"),
        ({"pool": "gap"}, r"pool: expected 'avg' or 'gem', got 'gap'"),
    ],
)
def test_invalid_arguments_raise_architecture_error(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ArchitectureError, match=message):
        create("efficientnet_b0", **kwargs)
