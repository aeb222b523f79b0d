"""A training run's checkpoint folder: ``epoch-NNN.pt`` after each epoch, ``best.pt`` the
weights of the best validation epoch so far.

A run starts by removing an earlier run's checkpoints from the folder: a run of 1 epoch
after one of 3 would otherwise leave ``epoch-002.pt`` and ``epoch-003.pt`` of other weights
beside its own, for an engineer to export by mistake.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

BEST = "best.pt"


def start_run(folder: Path) -> None:
    """Create ``folder`` for a new run, without an earlier run's checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in (*folder.glob("epoch-*.pt"), folder / BEST):
        old.unlink(missing_ok=True)


def save_epoch(model: nn.Module, folder: Path, epoch: int, best: bool) -> None:
    """Write the epoch's checkpoint, and ``best.pt`` too where it is the best so far."""
    state = model.state_dict()
    torch.save(state, folder / f"epoch-{epoch:03d}.pt")
    if best:
        torch.save(state, folder / BEST)


def load_best(model: nn.Module, folder: Path) -> None:
    model.load_state_dict(torch.load(folder / BEST, weights_only=True))
