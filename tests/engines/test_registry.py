from __future__ import annotations

import pytest
from torch import nn

from engines.models import available, create
from engines.models.registry import DuplicateModelError, UnknownModelError, register


def test_every_required_model_is_registered() -> None:
    assert {
        "resnet50",
        "resnet50_cbam",
        "densenet121",
        "efficientnet_b0",
        "hip_screen",
        "hipnet",
    } <= set(available())
    assert available() == sorted(available())


def test_unknown_name_lists_what_exists() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet51'; available: .*resnet50"):
        create("resnet51")


def test_names_are_unique() -> None:
    with pytest.raises(DuplicateModelError, match=r"model name 'resnet50' is already registered"):
        register("resnet50")(lambda: nn.Identity())


def test_feature_map_interface_is_checked() -> None:
    from engines.models.base import create_classifier
    from engines.models.layers import ArchitectureError

    assert create_classifier("efficientnet_b0", num_classes=3).num_features == 1280
    with pytest.raises(ArchitectureError, match=r"model 'hipnet' has no feature-map interface"):
        create_classifier("hipnet", backbones=("resnet50",))
