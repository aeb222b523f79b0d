from __future__ import annotations

import numpy as np
import pytest

from engines.models.osteoporosis import OSTEOPOROSIS_CLASSES
from engines.phantoms import PhantomError, osteoporosis_hip, screen_hip
from engines.phantoms.osteoporosis import BONE_FACTOR, bone_factor


@pytest.mark.parametrize("label", OSTEOPOROSIS_CLASSES)
def test_osteoporosis_phantom_is_deterministic(label: str) -> None:
    a, b = osteoporosis_hip(label, 5, 80), osteoporosis_hip(label, 5, 80)
    assert a.image.tobytes() == b.image.tobytes()
    assert (a.label, a.view) == (label, "AP")
    assert a.image.shape == (80, 80) and a.image.dtype == np.float32
    assert not a.mask.any()  # no focal lesion


def test_the_label_changes_only_the_bone() -> None:
    for seed in range(4):
        weak = osteoporosis_hip("osteoporosis", seed, 80).image
        strong = osteoporosis_hip("no_osteoporosis", seed, 80).image
        # Less attenuating bone is darker, never brighter; soft tissue alone is unchanged.
        assert np.all(weak <= strong + 1e-6)
        same = weak == strong
        assert 0.2 < same.mean() < 0.9
        # The same patient, hip and noise as the screening phantom of that seed.
        normal = screen_hip("normal", seed, 80).image
        assert np.array_equal(normal[same], strong[same])


def test_bone_factor_ranges_per_label() -> None:
    for label, (low, high) in BONE_FACTOR.items():
        factors = [bone_factor(label, seed) for seed in range(30)]
        assert all(low <= f <= high for f in factors)
    assert max(BONE_FACTOR["osteoporosis"]) < min(BONE_FACTOR["no_osteoporosis"])


def test_bone_is_less_dense_under_osteoporosis_on_average() -> None:
    seeds = range(12)
    weak = np.mean([osteoporosis_hip("osteoporosis", s, 64).image.mean() for s in seeds])
    strong = np.mean([osteoporosis_hip("no_osteoporosis", 100 + s, 64).image.mean() for s in seeds])
    assert weak < strong


def test_bad_arguments_raise() -> None:
    with pytest.raises(PhantomError, match=r'label: expected one of .*got "osteopenia"'):
        osteoporosis_hip("osteopenia", 0)
    with pytest.raises(PhantomError, match=r"seed: expected a non-negative integer, got -1"):
        osteoporosis_hip("osteoporosis", -1)
    with pytest.raises(PhantomError, match=r"size: expected 64-4096 pixels, got 32"):
        osteoporosis_hip("osteoporosis", 0, 32)
