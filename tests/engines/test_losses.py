from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional

from engines.losses import (
    ClassBalancedFocalLoss,
    LossConfigError,
    class_balanced_weights,
    lesion_attention_loss,
)


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
    with pytest.raises(LossConfigError, match=r"gamma: expected a number >= 0, got -1"):
        ClassBalancedFocalLoss([1], gamma=-1)


def test_confident_hits_keep_gradients_finite_for_gamma_below_one() -> None:
    # gamma < 1: (1 - p)**gamma has an infinite slope at p = 1; float32 rounds p to 1 here.
    logits = torch.tensor([[40.0, 0.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    loss = ClassBalancedFocalLoss([5, 5, 5], beta=0.99, gamma=0.5)(logits, torch.tensor([0, 1]))
    torch.autograd.backward(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert torch.isfinite(loss)


def test_lesion_attention_is_minus_log_of_the_true_class_share_on_lesion_cells() -> None:
    maps = torch.zeros(1, 3, 2, 2)  # uniform: each cell holds a quarter
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 1, 1] = True  # one pixel in the top-left cell
    loss = lesion_attention_loss(maps, torch.tensor([2]), masks)
    assert loss.item() == pytest.approx(math.log(4))
    masks[0, 6, 6] = True  # and one in the bottom-right cell: half of the mass
    assert lesion_attention_loss(maps, torch.tensor([2]), masks).item() == pytest.approx(
        math.log(2)
    )


def test_lesion_attention_reads_only_the_true_class_map() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True  # lesion in the top-left cell of a 2x2 map
    maps = torch.zeros(2, 2, 2, 2)
    maps[:, 0, 0, 0] = 20.0  # class 0 looks at the lesion, class 1 looks nowhere
    looks = lesion_attention_loss(maps, torch.tensor([0, 0]), masks)
    blind = lesion_attention_loss(maps, torch.tensor([1, 1]), masks)
    assert looks.item() < 1e-6 < blind.item() == pytest.approx(math.log(4))


def test_lesion_attention_ignores_hips_without_a_lesion() -> None:
    maps = torch.randn(3, 2, 2, 2, requires_grad=True)
    none = torch.zeros(3, 8, 8, dtype=torch.bool)
    loss = lesion_attention_loss(maps, torch.tensor([0, 1, 0]), none)
    assert loss.item() == 0.0
    one = none.clone()
    one[1, 0, 0] = True  # only the second hip has a lesion: only its class-1 map gets gradient
    lesion_attention_loss(maps, torch.tensor([0, 1, 0]), one).backward()
    assert maps.grad is not None
    assert maps.grad[1, 1].abs().sum() > 0
    assert maps.grad[0].abs().sum() == maps.grad[2].abs().sum() == maps.grad[1, 0].abs().sum() == 0
    # the gradient moves the map towards the lesion cell
    assert maps.grad[1, 1, 0, 0] < 0 < maps.grad[1, 1, 1, 1]


def test_lesion_attention_refuses_shapes_that_do_not_fit() -> None:
    with pytest.raises(LossConfigError, match=r"expected maps \(N, K, h, w\).*got \(2, 3, 2\)"):
        lesion_attention_loss(torch.zeros(2, 3, 2), torch.zeros(2), torch.zeros(2, 8, 8))
    with pytest.raises(LossConfigError, match=r"labels \(N,\) and masks \(N, H, W\)"):
        lesion_attention_loss(torch.zeros(2, 3, 2, 2), torch.zeros(2), torch.zeros(3, 8, 8))
    with pytest.raises(LossConfigError, match=r"masks \(1, 8\) are coarser than the maps \(2, 2\)"):
        lesion_attention_loss(torch.zeros(2, 3, 2, 2), torch.zeros(2), torch.zeros(2, 1, 8))
