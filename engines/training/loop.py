"""The training loop: class-balanced focal loss, lesion attention, AdamW, one-cycle, checkpoints.

Progress goes to a callback (the CLI draws the bar; nothing here prints). After
each epoch the model is validated and checkpointed; the best epoch's weights
are restored at the end. Hip-Net trains every member on its own fused logits
and each view's logits, so each member (and each interpretive head) learns
rather than only their average.

Where the training set has lesion masks (phantoms do, a labelled DICOM folder
does not), ``attention_weight`` adds :func:`lesion_attention_loss` on the class
maps (the screening net's per-cell head, whose GeM Grad-CAM weighs its channels
further; Hip-Net's AP interpretive maps, its heat maps themselves). The
learning rate follows a one-cycle curve over the run's progress, which is the
larger of the share of steps done and the share of ``max_seconds`` spent: a run
cut short by its time budget still anneals to the end of the curve instead of
stopping at a high learning rate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dicom_node.errors import DicomNodeError
from engines.catalog import EngineSpec
from engines.losses import ClassBalancedFocalLoss, check_focal_parameters, lesion_attention_loss
from engines.manifest import Preprocessing
from engines.models.hip_screen import HipScreen
from engines.models.hipnet import HipNet
from engines.training.batch_norm import recalibrate_batch_norm
from engines.training.checkpoints import load_best, save_epoch, start_run
from engines.training.data import HipSet, lateral_inputs, normalise
from engines.training.evaluate import evaluate
from engines.training.optimiser import adamw

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
    attention_weight: float = 1.0  # lesion attention term, where masks are known
    batch_norm_items: int = 128  # training items to recompute BatchNorm statistics from; 0: off

    def check(self) -> None:
        if self.epochs < 1:
            raise TrainingError(f"epochs: expected at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise TrainingError(f"batch_size: expected at least 2, got {self.batch_size}")
        # inf passed "> 0" and trained to an inf loss; NaN passed ">= 0" and turned the
        # attention term off without a word.
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise TrainingError(f"learning_rate: expected a number > 0, got {self.learning_rate}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise TrainingError(f"weight_decay: expected a number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.attention_weight) and self.attention_weight >= 0):
            raise TrainingError(
                f"attention_weight: expected a number >= 0, got {self.attention_weight}"
            )
        if self.max_seconds is not None and not (
            math.isfinite(self.max_seconds) and self.max_seconds >= 0
        ):  # 0: one step (the budget is checked after each)
            raise TrainingError(f"max_seconds: expected a number >= 0, got {self.max_seconds}")
        if self.batch_norm_items < 0:
            raise TrainingError(f"batch_norm_items: expected >= 0, got {self.batch_norm_items}")
        check_focal_parameters(self.beta, self.gamma)


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
    focal = ClassBalancedFocalLoss(counts, beta=options.beta, gamma=options.gamma)
    criterion = Criterion(focal, options.attention_weight)
    start_run(checkpoint_dir)
    optimiser = adamw(model.parameters(), options.learning_rate, options.weight_decay)
    # A last batch of one item is left out of the epoch (BatchNorm needs two), and out of
    # the count of steps the progress bar and the schedule go by.
    whole, rest = divmod(len(train_set), options.batch_size)
    steps = whole + (rest >= 2)  # at least 1: every class has an item, and there are several
    total_steps = steps * options.epochs
    generator = torch.Generator().manual_seed(options.seed)
    start = time.monotonic()
    history: list[EpochSummary] = []
    best, best_epoch = -1.0, 0
    for epoch in range(1, options.epochs + 1):
        model.train()
        order = torch.randperm(len(train_set), generator=generator)
        total, done = 0.0, 0
        for step in range(steps):
            index = order[step * options.batch_size : (step + 1) * options.batch_size]
            share = run_share(
                ((epoch - 1) * steps + step) / total_steps,
                time.monotonic() - start,
                options.max_seconds,
            )
            for group in optimiser.param_groups:
                group["lr"] = one_cycle_lr(share, options.learning_rate)
            loss = _loss(model, train_set.subset(index), pre, criterion)
            optimiser.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimiser.step()
            value = float(loss.item())
            if not math.isfinite(value):  # diverged: every later step and checkpoint is lost
                raise TrainingError(
                    f"epoch {epoch} step {step + 1}: the training loss is {value}; the run "
                    f"diverged (lower the learning rate, {options.learning_rate:g})"
                )
            total += value
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
        recalibrate_batch_norm(model, train_set, pre, options.batch_norm_items, seed=options.seed)
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
        save_epoch(model, checkpoint_dir, epoch, best=result.accuracy > best)
        if result.accuracy > best:
            best, best_epoch = result.accuracy, epoch
        if options.max_seconds is not None and time.monotonic() - start > options.max_seconds:
            log.info("%s: training time budget of %.0f s reached", spec.name, options.max_seconds)
            break
    if best_epoch != history[-1].epoch:  # the model holds the last epoch's weights
        load_best(model, checkpoint_dir)
    return history


@contextmanager
def channels_last(model: nn.Module) -> Iterator[None]:
    """Hold 2-D convolution kernels in channels-last (NHWC) order for the duration: oneDNN's
    CPU convolutions run ~7 % faster that way on the screening network. Only the memory
    layout changes; the kernels are back in the standard layout afterwards."""
    kernels = [p for p in model.parameters() if p.dim() == 4]
    planar = all(p.dim() < 5 for p in model.parameters())  # no channels-last for 3-D kernels
    if planar:
        _layout(kernels, torch.channels_last)
    try:
        yield
    finally:
        if planar:
            _layout(kernels, torch.contiguous_format)


def _layout(kernels: list[nn.Parameter], memory_format: torch.memory_format) -> None:
    with torch.no_grad():
        for kernel in kernels:
            kernel.data = kernel.data.contiguous(memory_format=memory_format)


def run_share(step_share: float, elapsed: float, max_seconds: float | None) -> float:
    """How much of the run is done: the share of steps, or of the time budget if larger."""
    if max_seconds is None or max_seconds <= 0:
        return step_share
    return max(step_share, elapsed / max_seconds)


def one_cycle_lr(done: float, max_lr: float, warmup: float = 0.2) -> float:
    """The learning rate at ``done`` (0..1) of a run: a cosine rise from ``max_lr``/25 over
    the first ``warmup`` share, then a cosine fall to ``max_lr``/1e4 (OneCycleLR's shape)."""
    done = min(max(done, 0.0), 1.0)
    start, end = max_lr / 25.0, max_lr / 1e4
    if done < warmup:
        return start + (max_lr - start) * (1 - math.cos(math.pi * done / warmup)) / 2
    return end + (max_lr - end) * (1 + math.cos(math.pi * (done - warmup) / (1 - warmup))) / 2


class Criterion:
    """The class-balanced focal loss plus, where masks are known, the lesion attention term."""

    def __init__(self, focal: nn.Module, attention_weight: float) -> None:
        self.focal = focal
        self.attention_weight = attention_weight

    def __call__(
        self,
        logits: Tensor,
        labels: Tensor,
        maps: Tensor | None = None,
        masks: Tensor | None = None,
    ) -> Tensor:
        loss: Tensor = self.focal(logits, labels)
        if self.attention_weight > 0 and maps is not None and masks is not None:
            loss = loss + self.attention_weight * lesion_attention_loss(maps, labels, masks)
        return loss


def _loss(model: nn.Module, batch: HipSet, pre: Preprocessing, criterion: Criterion) -> Tensor:
    ap = normalise(batch.ap, pre)
    if not isinstance(model, HipNet):
        if not isinstance(model, HipScreen):
            return criterion(model(ap), batch.labels)
        logits, features = model.forward_with_features(ap)
        return criterion(logits, batch.labels, model.class_maps(features), batch.masks)
    if batch.lateral is None or batch.lateral_present is None:
        raise TrainingError("Hip-Net needs lateral views and lateral_present in its training set")
    lateral, present = lateral_inputs(batch, pre)
    total = torch.zeros(())
    for member in model.members:
        fused, ap_map, lateral_map = member(ap, lateral, present)
        total = total + criterion(fused, batch.labels, ap_map, batch.masks)
        total = total + 0.5 * criterion(ap_map.mean(dim=(2, 3)), batch.labels)
        if bool(present.any()):
            seen = present > 0
            lateral_logits = lateral_map.mean(dim=(2, 3))[seen]
            total = total + 0.5 * criterion(lateral_logits, batch.labels[seen])
    return total / len(model.members)
