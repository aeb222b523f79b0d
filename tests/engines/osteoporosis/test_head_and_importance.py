from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.osteoporosis.head import FusionHead
from engines.osteoporosis.importance import (
    ImportanceError,
    permutation_importance,
    plot_importance,
    roc_auc,
)


def test_head_ignores_the_value_behind_a_missing_variable() -> None:
    torch.manual_seed(0)
    head = FusionHead(image_width=3, clinical_width=4).eval()
    image, clinical = torch.randn(5, 3), torch.randn(5, 4)
    missing = torch.zeros(5, 4)
    missing[:, 2] = 1.0
    head.fit_scaling(image, clinical, missing)
    assert head(image, clinical, missing).shape == (5, 2)
    changed = clinical.clone()
    changed[:, 2] = 1e6  # whatever sits in a missing slot does not matter
    assert torch.equal(head(image, clinical, missing), head(image, changed, missing))
    assert head.mean[3 + 2] == 0.0  # missing values stay out of the scaling statistics


def test_a_column_constant_in_training_keeps_a_spread_of_one() -> None:
    # Phantoms are F or M: the sex_other column is 0 in every training row. A spread of
    # ~0 would blow its first 1 at serving up to logits of ~1e5.
    torch.manual_seed(0)
    head = FusionHead(image_width=2, clinical_width=3).eval()
    image, clinical = torch.randn(6, 2), torch.randn(6, 3)
    clinical[:, 1] = 0.0
    head.fit_scaling(image, clinical, torch.zeros(6, 3))
    assert head.scale[2 + 1] == 1.0 and head.mean[2 + 1] == 0.0
    assert torch.all(head.scale[[0, 1, 2, 4]] != 1.0)
    unseen = clinical.clone()
    unseen[:, 1] = 1.0
    assert head(image, unseen, torch.zeros(6, 3)).abs().max() < 100.0
    assert head.unseen_clinical_columns() == (1,)
    # A checkpoint from before the fix: the same column with a spread of 1e-6.
    head.scale[2 + 1] = 1e-6
    assert head.unseen_clinical_columns() == (1,)
    all_missing = torch.zeros(6, 3)
    all_missing[:, 2] = 1.0  # a variable no training case had: unseen too
    head.fit_scaling(image, clinical, all_missing)
    assert head.unseen_clinical_columns() == (1, 2)


def test_permutation_importance_finds_the_column_the_model_uses(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    labels = (x[:, 1] > 0).astype(np.int64)

    def predict(inputs: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-4.0 * inputs[:, 1].astype(np.float64)))

    result = permutation_importance(predict, x, labels, {"a": [0], "bmi": [1], "c": [2]}, 5)
    assert result[0].name == "bmi"
    assert result[0].mean > 0.3 and all(abs(i.mean) < 0.05 for i in result[1:])
    png = plot_importance(result, tmp_path / "importance.png", "osteoporosis engine")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert roc_auc(np.array([0, 1]), np.array([0.2, 0.9])) == 1.0
    with pytest.raises(ImportanceError, match=r"needs both classes"):
        roc_auc(np.array([1, 1]), np.array([0.2, 0.9]))
    with pytest.raises(ImportanceError, match=r"groups\['x'\]: columns \[3\] not within 0-2"):
        permutation_importance(predict, x, labels, {"x": [3]})
    with pytest.raises(
        ImportanceError, match=r"expected \(N, F\) with N = 200 labels, got \[199, 3\]"
    ):
        permutation_importance(predict, x[:199], labels, {"a": [0]})
