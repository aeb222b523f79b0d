from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.models import create
from engines.models.layers import ArchitectureError
from engines.models.osteoporosis import BACKBONES, OsteoporosisNet
from engines.models.vgg import VGG
from engines.osteoporosis.reduction import FeatureReduction, fit_reduction


@pytest.fixture(scope="module")
def net() -> OsteoporosisNet:
    torch.manual_seed(0)
    model = create("osteoporosis", clinical_width=7, components=4)
    assert isinstance(model, OsteoporosisNet)
    return model.eval()


def test_the_fitted_reduction_inside_the_network_gives_what_numpy_gives(
    net: OsteoporosisNet, tmp_path: Path
) -> None:
    images = torch.randn(12, 1, 80, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = net.pooled_features(images)
    assert {k: v.shape[1] for k, v in pooled.items()} == {
        "inception_v3": 2048, "resnet50": 2048, "vgg19": 512,
    }  # fmt: skip
    features = {k: v.numpy() for k, v in pooled.items()}
    reduction = fit_reduction(features, components_per_backbone=3, clusters=4)
    with pytest.raises(ArchitectureError, match=r"reduction: not set"):
        net.image_components(images[:1])
    with pytest.raises(ArchitectureError, match=r"reduction: not set"):
        net.reduction()
    net.set_reduction(reduction)
    with torch.no_grad():
        inside = net.image_components(images).numpy()
        logits = net(images, torch.zeros(12, 7), torch.ones(12, 7))
    assert np.allclose(inside, reduction.transform(features), atol=1e-3, rtol=1e-4)
    assert logits.shape == (12, 2)
    # What packaging writes as reduction.npz: the network's copy, readable by load().
    path = tmp_path / "reduction.npz"
    net.reduction().save(path)
    again = FeatureReduction.load(path)
    assert again.backbones == reduction.backbones and again.clusters is None
    assert np.array_equal(again.selected, reduction.selected)
    assert np.allclose(again.transform(features), inside, atol=1e-3, rtol=1e-4)


def test_a_reduction_must_fit_the_network(net: OsteoporosisNet) -> None:
    rng = np.random.default_rng(0)
    features = {"vgg19": rng.normal(size=(10, 512)), "resnet50": rng.normal(size=(10, 2048))}
    with pytest.raises(ArchitectureError, match=r"fitted for backbones \['resnet50', 'vgg19'\]"):
        net.set_reduction(fit_reduction(features, 2, 2))
    full = {name: rng.normal(size=(10, 8)) for name in BACKBONES}
    with pytest.raises(ArchitectureError, match=r"selects 2 components, the head expects 4"):
        net.set_reduction(fit_reduction(full, 2, 2))
    with pytest.raises(ArchitectureError, match=r"components and clinical_width must be"):
        OsteoporosisNet(clinical_width=7, components=0)


def test_vgg19_keeps_only_its_convolutional_part() -> None:
    """The engine uses pooled convolutional features: fc6/fc7 are not in the network."""
    net = create("osteoporosis", clinical_width=7, components=4)
    vgg = net.backbones["vgg19"]
    assert isinstance(vgg, VGG)
    assert sum(p.numel() for p in vgg.parameters()) < 21_000_000  # 143.7 M with fc6/fc7
    logits, features = vgg.forward_with_features(torch.zeros(1, 1, 80, 80))
    assert logits.shape == (1, 2) and features.shape[1] == 512
