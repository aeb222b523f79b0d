"""Class-balanced focal loss (Cui et al., CVPR 2019), softmax form for single-label hips.

Each class is weighted by the inverse of its effective number of samples,
``(1 - beta**n_c) / (1 - beta)``, normalised so the weights sum to the number
of classes; the focal term ``(1 - p_t)**gamma`` down-weights easy examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional

from dicom_node.errors import DicomNodeError


class LossConfigError(DicomNodeError, ValueError):
    """beta, gamma or the class counts are out of range."""


def class_balanced_weights(counts: Sequence[int], beta: float) -> Tensor:
    if not 0 <= beta < 1:
        raise LossConfigError(f"beta: expected 0 <= beta < 1, got {beta}")
    if not counts or any(c < 1 for c in counts):
        raise LossConfigError(f"class counts: expected positive integers, got {list(counts)}")
    n = torch.tensor(counts, dtype=torch.float64)
    effective = (1.0 - beta**n) / (1.0 - beta)
    weights = 1.0 / effective
    return (weights * len(counts) / weights.sum()).to(torch.float32)


class ClassBalancedFocalLoss(nn.Module):
    def __init__(self, counts: Sequence[int], beta: float = 0.9999, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise LossConfigError(f"gamma: expected >= 0, got {gamma}")
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
