"""The training loop: class-balanced focal loss, AdamW with a one-cycle schedule, checkpoints.

Progress goes to a callback (the CLI draws the bar; nothing here prints). After
each epoch the model is validated and checkpointed; the best epoch's weights
are restored at the end. Hip-Net trains every member on its own fused logits
and each view's logits, so each member (and each interpretive head) learns
rather than only their average.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dicom_node.errors import DicomNodeError
from engines.catalog import EngineSpec
from engines.losses import ClassBalancedFocalLoss
from engines.manifest import Preprocessing
from engines.models.hipnet import HipNet
from engines.training.data import HipSet, normalise
from engines.training.evaluate import evaluate

log = logging.getLogger(__name__)


class TrainingError(DicomNodeError, ValueError):
    """Training options or data do not fit together."""


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    beta: float = 0.999  # class-balanced loss (Cui et al. 2019)
    gamma: float = 2.0  # focal term
    seed: int = 0
    max_seconds: float | None = None  # stop after the step that crosses this budget

    def check(self) -> None:
        if self.epochs < 1:
            raise TrainingError(f"epochs: expected at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise TrainingError(f"batch_size: expected at least 2, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise TrainingError(f"learning_rate: expected > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class Progress:
    phase: str  # "train"
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    elapsed: float


@dataclass(frozen=True)
class EpochSummary:
    epoch: int
    train_loss: float
    val_accuracy: float
    seconds: float


def train(
    spec: EngineSpec,
    model: nn.Module,
    train_set: HipSet,
    val_set: HipSet,
    pre: Preprocessing,
    options: TrainOptions,
    checkpoint_dir: Path,
    progress: Callable[[Progress], None] | None = None,
) -> list[EpochSummary]:
    """Train ``model`` in place; return one summary per epoch run (best weights restored)."""
    options.check()
    torch.manual_seed(options.seed)
    num_classes = len(spec.findings)
    counts = train_set.class_counts(num_classes)
    if any(c == 0 for c in counts):
        missing = [spec.class_names[i] for i, c in enumerate(counts) if c == 0]
        raise TrainingError(f"training set has no item of class(es) {missing}")
    criterion = ClassBalancedFocalLoss(counts, beta=options.beta, gamma=options.gamma)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay
    )
    steps = math.ceil(len(train_set) / options.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=options.learning_rate, total_steps=steps * options.epochs, pct_start=0.2
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(options.seed)
    start = time.monotonic()
    history: list[EpochSummary] = []
    best = -1.0
    for epoch in range(1, options.epochs + 1):
        model.train()
        order = torch.randperm(len(train_set), generator=generator)
        total, done = 0.0, 0
        for step in range(steps):
            index = order[step * options.batch_size : (step + 1) * options.batch_size]
            if len(index) < 2:  # BatchNorm needs two items
                continue
            loss = _loss(model, train_set.subset(index), pre, criterion)
            optimiser.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimiser.step()
            schedule.step()
            total += float(loss.item())
            done += 1
            if progress:
                progress(
                    Progress(
                        "train",
                        epoch,
                        options.epochs,
                        step + 1,
                        steps,
                        total / done,
                        time.monotonic() - start,
                    )
                )
            if options.max_seconds is not None and time.monotonic() - start > options.max_seconds:
                break
        result = evaluate(spec, model, val_set, pre, heatmaps=False)
        summary = EpochSummary(
            epoch, total / max(done, 1), result.accuracy, time.monotonic() - start
        )
        history.append(summary)
        log.info(
            "%s epoch %d/%d: loss %.4f, validation accuracy %.3f",
            spec.name,
            epoch,
            options.epochs,
            summary.train_loss,
            summary.val_accuracy,
        )
        torch.save(model.state_dict(), checkpoint_dir / f"epoch-{epoch:03d}.pt")
        if result.accuracy > best:
            best = result.accuracy
            torch.save(model.state_dict(), checkpoint_dir / "best.pt")
        if options.max_seconds is not None and time.monotonic() - start > options.max_seconds:
            log.info("%s: training time budget of %.0f s reached", spec.name, options.max_seconds)
            break
    model.load_state_dict(torch.load(checkpoint_dir / "best.pt", weights_only=True))
    return history


def _loss(model: nn.Module, batch: HipSet, pre: Preprocessing, criterion: nn.Module) -> Tensor:
    ap = normalise(batch.ap, pre)
    if not isinstance(model, HipNet):
        logits: Tensor = model(ap)
        loss: Tensor = criterion(logits, batch.labels)
        return loss
    if batch.lateral is None or batch.lateral_present is None:
        raise TrainingError("Hip-Net needs lateral views and lateral_present in its training set")
    lateral = normalise(batch.lateral, pre) * batch.lateral_present[:, None, None, None]
    present = batch.lateral_present
    total = torch.zeros(())
    for member in model.members:
        fused, ap_map, lateral_map = member(ap, lateral, present)
        total = total + criterion(fused, batch.labels)
        total = total + 0.5 * criterion(ap_map.mean(dim=(2, 3)), batch.labels)
        if bool(present.any()):
            seen = present > 0
            lateral_logits = lateral_map.mean(dim=(2, 3))[seen]
            total = total + 0.5 * criterion(lateral_logits, batch.labels[seen])
    return total / len(model.members)
