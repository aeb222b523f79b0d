"""Tiny hand-made HipSets whose items say where they went (their pixel is their index)."""

from __future__ import annotations

import torch

from engines.training.data import HipSet


def numbered(labels: list[int]) -> HipSet:
    """Items whose pixel value is their index, to see where each one went."""
    n = len(labels)
    return HipSet(
        ap=torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1),
        labels=torch.tensor(labels),
        masks=torch.zeros(n, 1, 1, dtype=torch.bool),
    )


def indices(part: HipSet) -> set[int]:
    return {int(v) for v in part.ap.flatten()}
