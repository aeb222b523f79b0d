from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from engines.osteoporosis.reduction import FeatureReduction, ReductionError, fit_reduction


def features(n: int = 80, seed: int = 0) -> dict[str, np.ndarray]:
    """Three 'backbones' that see the same three latent factors through different mixtures."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    out = {}
    for name, width in (("vgg19", 40), ("inception_v3", 30), ("resnet50", 50)):
        mix = rng.normal(size=(3, width))
        out[name] = (latent @ mix + 0.05 * rng.normal(size=(n, width))).astype(np.float32)
    return out


def test_selection_keeps_one_component_per_cluster_and_transform_matches_sklearn() -> None:
    data = features()
    reduction = fit_reduction(data, components_per_backbone=4, clusters=3)
    assert reduction.backbones == ("inception_v3", "resnet50", "vgg19")
    assert reduction.width == 3 == len(np.unique(reduction.clusters))
    assert sorted(np.unique(reduction.clusters[reduction.selected]).tolist()) == [0, 1, 2]
    out = reduction.transform(data)
    assert out.shape == (80, 3) and out.dtype == np.float32
    joined = np.concatenate(
        [PCA(4, svd_solver="full").fit(data[b]).transform(data[b]) for b in reduction.backbones],
        axis=1,
    )
    # PCA's sign is arbitrary but deterministic for the same data: the values agree.
    assert np.allclose(np.abs(out), np.abs(joined[:, reduction.selected]), atol=1e-3)
    assert all(name.split(".")[0] in data for name in reduction.names())


def test_shared_factors_are_clustered_across_backbones() -> None:
    reduction = fit_reduction(features(), components_per_backbone=3, clusters=3)
    # Three latent factors, each seen by all three backbones: every cluster spans backbones.
    for cluster in np.unique(reduction.clusters):
        members = np.flatnonzero(reduction.clusters == cluster)
        assert len({int(m) // 3 for m in members}) > 1


def test_saved_reduction_reproduces_the_same_output(tmp_path: Path) -> None:
    data = features()
    reduction = fit_reduction(data, components_per_backbone=4, clusters=5)
    reduction.save(tmp_path / "reduction.npz")
    loaded = FeatureReduction.load(tmp_path / "reduction.npz")
    assert loaded.names() == reduction.names()
    assert np.array_equal(loaded.transform(data), reduction.transform(data))


def test_errors_name_what_does_not_fit(tmp_path: Path) -> None:
    data = features()
    reduction = fit_reduction(data, components_per_backbone=2, clusters=2)
    with pytest.raises(ReductionError, match=r"features: missing backbone 'vgg19'"):
        reduction.transform({k: v for k, v in data.items() if k != "vgg19"})
    with pytest.raises(
        ReductionError, match=r"features\['resnet50'\]: expected \(N, 50\), got \[80, 49\]"
    ):
        reduction.transform({**data, "resnet50": data["resnet50"][:, :49]})
    with pytest.raises(ReductionError, match=r"different sample counts \[79, 80\]"):
        fit_reduction({**data, "vgg19": data["vgg19"][:79]}, 2, 2)
    with pytest.raises(ReductionError, match=r"1 samples are too few"):
        fit_reduction({k: v[:1] for k, v in data.items()}, 2, 2)
    with pytest.raises(
        ReductionError, match=r"clusters: expected 1 to 6 \(the components\), got 7"
    ):
        fit_reduction(data, 2, 7)
    with pytest.raises(ReductionError, match=r"expected at least one backbone"):
        fit_reduction({}, 2, 1)
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    with pytest.raises(ReductionError, match=r"bad.npz: not a feature reduction"):
        FeatureReduction.load(tmp_path / "bad.npz")
