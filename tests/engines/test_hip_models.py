from __future__ import annotations

import torch

from engines.models import create
from engines.models.base import create_classifier
from engines.models.hip_screen import SCREEN_CLASSES, HipScreen
from engines.models.hipnet import FAILURE_CLASSES, MEMBER_BACKBONES, HipNet


def test_hip_screen_is_resnet50_cbam_gem_with_eight_classes() -> None:
    model = create("hip_screen")
    assert isinstance(model, HipScreen)
    assert len(SCREEN_CLASSES) == 8
    model.eval()
    with torch.no_grad():
        logits, features = model.forward_with_features(torch.rand(2, 1, 128, 128))
    assert logits.shape == (2, 8)
    assert features.shape == (2, 2048, 4, 4)
    pool = model.backbone.pool
    assert float(pool.p.detach()) == 3.0  # GeM's learnable exponent starts at 3


def test_hipnet_has_four_dual_view_members_of_different_families() -> None:
    model = create("hipnet")
    assert isinstance(model, HipNet)
    assert len(model.members) == 4
    assert len(set(MEMBER_BACKBONES)) == 4
    for member in model.members:
        assert member.ap is not member.lateral  # one branch per view, weights not shared


def test_hipnet_outputs_probabilities_maps_and_pji_risk() -> None:
    torch.manual_seed(0)
    model = HipNet(backbones=("resnet50", "efficientnet_b0")).eval()
    ap, lateral = torch.rand(2, 1, 96, 96), torch.rand(2, 1, 96, 64)
    with torch.no_grad():
        probability, maps, risk = model(ap, lateral, torch.ones(2))
    assert probability.shape == (2, len(FAILURE_CLASSES))
    assert torch.allclose(probability.sum(dim=1), torch.ones(2), atol=1e-5)
    assert maps.shape == (2, 5, 3, 3)
    assert bool(((maps > 0) & (maps < 1)).all())
    assert torch.allclose(risk, 100 * probability[:, 0])


def test_missing_lateral_view_is_masked_out() -> None:
    torch.manual_seed(0)
    model = HipNet(backbones=("resnet50",)).eval()
    ap = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        missing_a, _, _ = model(ap, torch.zeros(1, 1, 64, 64), torch.zeros(1))
        missing_b, _, _ = model(ap, torch.rand(1, 1, 64, 64), torch.zeros(1))
        present, _, _ = model(ap, torch.rand(1, 1, 64, 64), torch.ones(1))
    assert torch.allclose(missing_a, missing_b)  # the lateral tensor does not matter then
    assert not torch.allclose(missing_a, present)


def test_class_maps_average_to_the_logits_of_an_average_pooled_head() -> None:
    torch.manual_seed(0)
    model = create_classifier("resnet50", num_classes=3, in_channels=1, pool="avg").eval()
    with torch.no_grad():
        logits, features = model.forward_with_features(torch.rand(2, 1, 96, 96))
        maps = model.class_maps(features)
    assert maps.shape == (2, 3, 3, 3)
    assert torch.allclose(maps.mean(dim=(2, 3)), logits, atol=1e-5)
    screen = create("hip_screen").eval()
    assert isinstance(screen, HipScreen)
    with torch.no_grad():
        _, screen_features = screen.forward_with_features(torch.rand(1, 1, 64, 64))
    assert screen.class_maps(screen_features).shape == (1, 8, 2, 2)
