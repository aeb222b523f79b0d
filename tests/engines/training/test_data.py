from __future__ import annotations

import pytest
import torch

from engines.catalog import engine_spec
from engines.training.data import DataError, phantom_set, split


def test_phantom_set_for_one_view_engine() -> None:
    data = phantom_set(engine_spec("hip_screen"), 2, 64, seed=5)
    assert data.ap.shape == (16, 1, 64, 64) and data.ap.dtype == torch.float32
    assert data.labels.tolist() == list(range(8)) * 2
    assert data.lateral is None and data.lateral_present is None
    assert not data.masks[data.labels == 0].any()  # normal hips have no lesion
    assert all(data.masks[i].any() for i in range(16) if data.labels[i] != 0)
    again = phantom_set(engine_spec("hip_screen"), 2, 64, seed=5)
    assert torch.equal(data.ap, again.ap)


def test_phantom_set_for_hipnet_drops_lateral_views_on_request() -> None:
    data = phantom_set(engine_spec("hipnet"), 4, 64, seed=0, lateral_missing=0.5)
    assert data.lateral is not None and data.lateral_present is not None
    missing = data.lateral_present == 0
    assert 0 < int(missing.sum()) < 20
    assert data.lateral[missing].abs().max() == 0
    assert data.lateral[~missing].abs().max() > 0
    assert data.class_counts(5) == [4] * 5


def test_split_is_stratified_and_disjoint() -> None:
    data = phantom_set(engine_spec("hip_screen"), 5, 64, seed=0)
    train, validation = split(data, 0.2, seed=1)
    assert train.class_counts(8) == [4] * 8 and validation.class_counts(8) == [1] * 8
    pairs = {tuple(x.flatten()[:50].tolist()) for x in train.ap}
    assert not any(tuple(x.flatten()[:50].tolist()) in pairs for x in validation.ap)


def test_bad_requests() -> None:
    spec = engine_spec("hip_screen")
    with pytest.raises(DataError, match="per_class: expected at least 1, got 0"):
        phantom_set(spec, 0, 64, seed=0)
    with pytest.raises(DataError, match=r"lateral_missing: expected a share in \[0, 1\), got 1.0"):
        phantom_set(spec, 1, 64, seed=0, lateral_missing=1.0)
    data = phantom_set(spec, 1, 64, seed=0)
    with pytest.raises(DataError, match=r"validation_share: expected a share in \(0, 1\), got 0"):
        split(data, 0, seed=0)
    with pytest.raises(DataError, match="has 1 item"):
        split(data, 0.5, seed=0)
