"""Class-balanced focal loss (Cui et al., CVPR 2019), softmax form for single-label hips.

Each class is weighted by the inverse of its effective number of samples,
``(1 - beta**n_c) / (1 - beta)``, normalised so the weights sum to the number
of classes; the focal term ``(1 - p_t)**gamma`` down-weights easy examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional

from dicom_node.errors import DicomNodeError


class LossConfigError(DicomNodeError, ValueError):
    """beta, gamma or the class counts are out of range."""


def check_focal_parameters(beta: float, gamma: float = 0.0) -> None:
    """The class-balanced focal loss's own parameters, checked before any data is at hand."""
    if not 0 <= beta < 1:
        raise LossConfigError(f"beta: expected 0 <= beta < 1, got {beta}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise LossConfigError(f"gamma: expected a number >= 0, got {gamma}")


def class_balanced_weights(counts: Sequence[int], beta: float) -> Tensor:
    check_focal_parameters(beta)
    if not counts or any(c < 1 for c in counts):
        raise LossConfigError(f"class counts: expected positive integers, got {list(counts)}")
    n = torch.tensor(counts, dtype=torch.float64)
    effective = (1.0 - beta**n) / (1.0 - beta)
    weights = 1.0 / effective
    return (weights * len(counts) / weights.sum()).to(torch.float32)


class ClassBalancedFocalLoss(nn.Module):
    def __init__(self, counts: Sequence[int], beta: float = 0.9999, gamma: float = 2.0) -> None:
        super().__init__()
        check_focal_parameters(beta, gamma)
        self.gamma = gamma
        self.weights: Tensor
        self.register_buffer("weights", class_balanced_weights(counts, beta))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        log_p = functional.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        # (1 - p)**gamma has an infinite slope at p = 1 when gamma < 1; a confident hit
        # (p rounds to 1 in float32) would turn every gradient into NaN. The floor keeps it
        # finite and changes the loss by at most eps**gamma * -log(p), i.e. nothing.
        floor = torch.finfo(logits.dtype).eps
        focal = (1.0 - log_p.exp()).clamp(min=floor).pow(self.gamma)
        return (-self.weights[target] * focal * log_p).mean()


def lesion_attention_loss(maps: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
    """How far each hip's class map for its true class looks away from its lesion.

    ``maps`` (N, K, h, w) are per-cell class logits (a class-activation map),
    ``masks`` (N, H, W) the lesion masks. A cell is a lesion cell when its block of
    pixels holds any lesion pixel. For every hip with a lesion the term is
    ``-log`` of the share of the true class's spatial softmax that falls on lesion
    cells (zero when all of it does), averaged over those hips; hips without a lesion
    (normal hips, or data with no masks) add nothing. This is the localisation
    supervision of "attention mining" (Li et al., CVPR 2018, GAIN): with lesion
    masks the network learns where to look, not only what to answer.
    """
    if maps.dim() != 4 or masks.dim() != 3 or not len(maps) == len(masks) == len(labels):
        raise LossConfigError(
            f"lesion attention: expected maps (N, K, h, w), labels (N,) and masks (N, H, W), "
            f"got {tuple(maps.shape)}, {tuple(labels.shape)} and {tuple(masks.shape)}"
        )
    h, w = maps.shape[-2:]
    if masks.shape[-2] < h or masks.shape[-1] < w:
        raise LossConfigError(
            f"lesion attention: masks {tuple(masks.shape[-2:])} are coarser than "
            f"the maps ({h}, {w})"
        )
    cells = functional.adaptive_max_pool2d(masks[:, None].to(maps.dtype), (h, w))[:, 0] > 0
    cells = cells.flatten(1)
    positive = cells.any(dim=1)
    if not bool(positive.any()):
        return maps.new_zeros(())
    true_maps = maps[torch.arange(len(maps)), labels].flatten(1)[positive]
    log_share = functional.log_softmax(true_maps, dim=1)
    inside = log_share.masked_fill(~cells[positive], float("-inf"))
    return -torch.logsumexp(inside, dim=1).mean()
