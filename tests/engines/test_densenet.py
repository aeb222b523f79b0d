"""DenseNet-121: the published structure, the feature-map interface and its argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.models import create
from engines.models.densenet import DenseLayer, DenseNet, densenet121
from engines.models.layers import ArchitectureError, AvgPool, GeM

TORCHVISION_PARAMS = 7_978_856  # torchvision densenet121; 8.0M in Huang et al. (2017)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def standard() -> DenseNet:
    return densenet121().eval()


def test_registered_constructor_builds_the_reference_count(standard: DenseNet) -> None:
    assert isinstance(create("densenet121"), DenseNet)
    assert count(standard) == TORCHVISION_PARAMS


def test_initialisation_follows_the_reference(standard: DenseNet) -> None:
    # He-normal over fan-in for every convolution (PyTorch's default would give a third
    # of that variance), zero bias for the classifier.
    convs = [m for m in standard.modules() if isinstance(m, nn.Conv2d)]
    big = max(convs, key=lambda m: m.weight.numel())
    fan_in = big.weight[0].numel()
    assert float(big.weight.detach().std()) == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.05)
    assert float(standard.fc.bias.detach().abs().max()) == 0.0


def test_block_config_and_growth_rate(standard: DenseNet) -> None:
    layers = [m for m in standard.features if isinstance(m, DenseLayer)]
    assert len(layers) == 6 + 12 + 24 + 16
    # The first layer of each block sees 64, 128, 256, 512 channels: compression 0.5.
    firsts = [layers[i].body[0] for i in (0, 6, 18, 42)]
    assert [bn.num_features for bn in firsts] == [64, 128, 256, 512]
    bottleneck = layers[0].body[2]
    assert isinstance(bottleneck, nn.Conv2d) and bottleneck.out_channels == 4 * 32
    # Final norm + ReLU close the feature extractor.
    assert isinstance(standard.features[-2], nn.BatchNorm2d)
    assert standard.features[-2].num_features == 1024
    assert isinstance(standard.features[-1], nn.ReLU)


def test_standard_input_gives_logits_and_a_7x7_map(standard: DenseNet) -> None:
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        logits, features = standard.forward_with_features(x)
        plain = standard(x)
    assert logits.shape == (2, 1000)
    assert features.shape == (2, 1024, 7, 7)
    assert torch.allclose(logits, plain)
    assert float(features.min()) >= 0.0  # taken after the final ReLU
    assert torch.allclose(standard.forward_features(x), features)


def test_head_is_pool_then_linear(standard: DenseNet) -> None:
    assert standard.num_features == 1024
    assert isinstance(standard.pool, AvgPool)
    assert isinstance(standard.fc, nn.Linear)
    assert (standard.fc.in_features, standard.fc.out_features) == (1024, 1000)
    features = torch.rand(2, 1024, 7, 7)
    expected = standard.fc(features.mean(dim=(2, 3)))
    assert torch.allclose(standard.fc(standard.pool(features)), expected)


def test_single_channel_non_square_input() -> None:
    model = create("densenet121", num_classes=2, in_channels=1).eval()
    with torch.no_grad():
        logits, features = model.forward_with_features(torch.rand(1, 1, 160, 96))
    assert logits.shape == (1, 2)
    assert features.shape == (1, 1024, 5, 3)


def test_drop_rate_adds_dropout_to_every_dense_layer() -> None:
    model = densenet121(num_classes=3, drop_rate=0.2)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 58
    assert all(d.p == 0.2 for d in dropouts)
    assert count(model) == count(densenet121(num_classes=3))


def test_gem_pool_has_a_learnable_exponent() -> None:
    model = create("densenet121", num_classes=2, pool="gem")
    assert isinstance(model.pool, GeM)
    assert float(model.pool.p.detach()) == 3.0
    assert count(model) == count(create("densenet121", num_classes=2)) + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, r"num_classes and in_channels must be >= 1, got 0 and 3"),
        ({"in_channels": 0}, r"num_classes and in_channels must be >= 1, got 1000 and 0"),
        ({"pool": "max"}, r"pool: expected 'avg' or 'gem', got 'max'"),
    ],
)
def test_invalid_arguments_raise_architecture_error(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ArchitectureError, match=message):
        create("densenet121", **kwargs)
