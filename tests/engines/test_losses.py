from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from engines.losses import ClassBalancedFocalLoss, LossConfigError, class_balanced_weights


def test_weights_follow_the_effective_number_of_samples() -> None:
    weights = class_balanced_weights([1000, 10], beta=0.99)
    effective = torch.tensor([(1 - 0.99**1000) / 0.01, (1 - 0.99**10) / 0.01])
    expected = (1 / effective) * 2 / (1 / effective).sum()
    assert torch.allclose(weights, expected.float())
    assert weights[1] > weights[0]  # the rare class weighs more
    assert torch.allclose(class_balanced_weights([5, 50], beta=0.0), torch.ones(2))


def test_gamma_zero_and_beta_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss = ClassBalancedFocalLoss([10, 20, 30], beta=0.0, gamma=0.0)
    assert torch.allclose(loss(logits, target), functional.cross_entropy(logits, target))


def test_focal_term_down_weights_easy_examples() -> None:
    easy = torch.tensor([[10.0, 0.0]])
    hard = torch.tensor([[0.5, 0.0]])
    target = torch.tensor([0])
    focal = ClassBalancedFocalLoss([1, 1], beta=0.0, gamma=2.0)
    plain = ClassBalancedFocalLoss([1, 1], beta=0.0, gamma=0.0)
    assert focal(easy, target) / plain(easy, target) < focal(hard, target) / plain(hard, target)


def test_bad_parameters() -> None:
    with pytest.raises(LossConfigError, match=r"beta: expected 0 <= beta < 1, got 1"):
        class_balanced_weights([1], beta=1)
    with pytest.raises(
        LossConfigError, match=r"class counts: expected positive integers, got \[3, 0\]"
    ):
        class_balanced_weights([3, 0], beta=0.9)
    with pytest.raises(LossConfigError, match=r"gamma: expected >= 0, got -1"):
        ClassBalancedFocalLoss([1], gamma=-1)


def test_confident_hits_keep_gradients_finite_for_gamma_below_one() -> None:
    # gamma < 1: (1 - p)**gamma has an infinite slope at p = 1; float32 rounds p to 1 here.
    logits = torch.tensor([[40.0, 0.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    loss = ClassBalancedFocalLoss([5, 5, 5], beta=0.99, gamma=0.5)(logits, torch.tensor([0, 1]))
    torch.autograd.backward(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert torch.isfinite(loss)
