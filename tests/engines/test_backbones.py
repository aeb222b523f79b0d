"""The backbones against their published parameter counts, and their shared interface."""

from __future__ import annotations

import pytest
import torch

from engines.models import create
from engines.models.layers import ArchitectureError

# Standard configurations (1000 classes, 3 channels). ResNet-50, DenseNet-121 and
# EfficientNet-B0: the reference implementations' counts (25.6M, 8.0M, 5.3M in the
# papers); ResNet-50 + CBAM: 28.09M in Woo et al. (2018), Table 3.
PUBLISHED = {
    "resnet50": 25_557_032,
    "densenet121": 7_978_856,
    "efficientnet_b0": 5_288_548,
}
CBAM_PAPER = 28.09e6
FEATURES = {"resnet50": 2048, "resnet50_cbam": 2048, "densenet121": 1024, "efficientnet_b0": 1280}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "expected"), PUBLISHED.items())
def test_parameter_counts_match_the_reference(name: str, expected: int) -> None:
    assert count(create(name)) == expected


def test_resnet50_cbam_matches_the_cbam_paper() -> None:
    params = count(create("resnet50_cbam"))  # 28,089,624
    assert abs(params - CBAM_PAPER) / CBAM_PAPER < 0.005


@pytest.mark.parametrize("name", FEATURES)
def test_logits_and_last_feature_map(name: str) -> None:
    model = create(name, num_classes=5, in_channels=1).eval()
    with torch.no_grad():
        logits, features = model.forward_with_features(torch.rand(2, 1, 96, 64))
        plain = model(torch.rand(1, 1, 64, 64))
    assert logits.shape == (2, 5)
    assert features.shape == (2, FEATURES[name], 3, 2)
    assert plain.shape == (1, 5)
    assert model.num_features == FEATURES[name]


def test_standard_input_gives_a_7x7_map() -> None:
    model = create("resnet50").eval()
    with torch.no_grad():
        _, features = model.forward_with_features(torch.rand(1, 3, 224, 224))
    assert features.shape == (1, 2048, 7, 7)


@pytest.mark.parametrize("name", FEATURES)
def test_invalid_arguments_are_refused(name: str) -> None:
    with pytest.raises(ArchitectureError, match=r"num_classes and in_channels must be >= 1, got 0"):
        create(name, num_classes=0)
    with pytest.raises(ArchitectureError, match=r"pool: expected 'avg' or 'gem', got 'max'"):
        create(name, pool="max")


def test_dropout_probabilities_are_checked() -> None:
    with pytest.raises(
        ArchitectureError, match=r"drop_rate: expected a probability in \[0, 1\), got -0.5"
    ):
        create("densenet121", drop_rate=-0.5)
    with pytest.raises(
        ArchitectureError, match=r"dropout: expected a probability in \[0, 1\), got 1.5"
    ):
        create("efficientnet_b0", dropout=1.5)
