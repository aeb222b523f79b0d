"""Training the multimodal hip engine (seed 000) on phantom studies: radiograph, CT, text.

Each phantom case draws its three modalities from one seed and label:

- the radiograph is the screening phantom of the label (``screen_hip``); femoroacetabular
  impingement has no radiograph phantom and gets the *normal* one of that seed: FAI is
  drawn on CT and in the request text only, the AP radiograph looks normal. That is
  realistic for subtle cam lesions, and it makes the fusion matter (the radiograph alone
  cannot tell FAI from normal);
- the CT is ``ct_hip`` through :func:`engines.ct_grid.engine_volume`, the function serving
  applies to a CT series read from DICOM;
- the text is ``multimodal_case(...).text`` (what serving reads from the header) encoded
  by :class:`engines.text_encoder.TextEncoder`; a case without text has a zero embedding
  and ``present[:, 2] = 0``, as in serving.

Inputs are stored exactly as serving feeds them (normalised radiograph and CT, the
embedding, ``present``). Training drops the CT and the text of a random share of the items
at each step (zero input, ``present`` 0) so a study without them is classified from what it
has. The loss is cross-entropy on the fused logits plus auxiliary cross-entropy on the
radiograph branch's own logits (the Grad-CAM head) and on the CT branch's pooled features
through its (otherwise unused) classifier, so each backbone learns rather than only the
fusion. Training runs in two stages (see :func:`train_multimodal`): the fusion on cached
features of the frozen, BatchNorm-calibrated backbones, then end-to-end epochs within the
time budget. On the demo budget (2 CPU cores, ~1 min of training) the backbones barely
learn: the demo engine classifies mostly from the text, and its evaluation says so
(accuracy without text, the radiograph branch's accuracy, the attention). The evaluation
reports accuracy with every modality and with the CT or the text removed, and the mean
attention on each modality.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from engines.catalog import EngineSpec
from engines.ct_grid import engine_volume
from engines.manifest import Preprocessing
from engines.models.hip_multimodal import MODALITIES, TEXT_DIM, HipMultimodal
from engines.models.resnet import Bottleneck
from engines.models.resnet3d import Bottleneck3d
from engines.phantoms.clinical import multimodal_case
from engines.phantoms.ct import ct_hip, phantom_image
from engines.phantoms.screen import screen_hip
from engines.training.checkpoints import load_best, save_epoch, start_run
from engines.training.data import DataError
from engines.training.evaluate import confusion_and_recall
from engines.training.loop import EpochSummary, Progress, TrainingError
from engines.training.optimiser import adamw, one_cycle

log = logging.getLogger(__name__)

# The label whose radiograph phantom stands in for a class the radiograph cannot show.
RADIOGRAPH_STAND_IN = {"femoroacetabular_impingement": "normal"}
RADIOGRAPH, CT, TEXT = range(len(MODALITIES))


class Encoder(Protocol):
    """What the set builder needs of a text encoder (engines.text_encoder.TextEncoder)."""

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class MultimodalOptions:
    fusion_steps: int = 300  # stage 1: the fusion on cached features of frozen backbones
    fusion_batch_size: int = 64
    fusion_learning_rate: float = 2e-3
    calibration_items: int = 64  # training items that set the BatchNorm statistics
    epochs: int = 1  # stage 2: end-to-end epochs (0: none)
    batch_size: int = 16
    learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    clip_norm: float = 1.0  # stage 2's gradient clipping
    ct_missing: float = 0.25  # share of training items whose CT is dropped at each step
    text_missing: float = 0.15  # ... and whose text is dropped
    radiograph_weight: float = 0.5  # auxiliary loss on the radiograph branch's logits
    ct_weight: float = 0.5  # auxiliary loss on the CT branch's pooled features
    seed: int = 0
    max_seconds: float | None = None  # stop after the step that crosses this budget

    def check(self) -> None:
        if self.epochs < 0:
            raise TrainingError(f"epochs: expected at least 0, got {self.epochs}")
        if self.fusion_steps < 1:
            raise TrainingError(f"fusion_steps: expected at least 1, got {self.fusion_steps}")
        if self.batch_size < 2:
            raise TrainingError(f"batch_size: expected at least 2, got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise TrainingError(f"learning_rate: expected a number > 0, got {self.learning_rate}")
        for name in ("ct_missing", "text_missing"):
            share = getattr(self, name)
            if not 0.0 <= share < 1.0:
                raise TrainingError(f"{name}: expected a share in [0, 1), got {share}")


@dataclass(frozen=True)
class MultimodalSet:
    """Phantom studies as serving feeds them: ``radiograph`` (N,1,S,S) and ``ct``
    (N,1,D,H,W) normalised, ``text`` (N,384) embeddings, ``present`` (N,3), ``labels``."""

    radiograph: Tensor
    ct: Tensor
    text: Tensor
    present: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> MultimodalSet:
        return MultimodalSet(
            self.radiograph[index],
            self.ct[index],
            self.text[index],
            self.present[index],
            self.labels[index],
        )

    def without(self, modality: int) -> MultimodalSet:
        """The same studies with one modality absent (zero input, ``present`` 0)."""
        if modality == RADIOGRAPH:
            raise DataError("the radiograph is always present; only CT or text can be removed")
        keep = torch.ones(len(MODALITIES))
        keep[modality] = 0.0
        return self.masked(keep.expand(len(self), -1))

    def masked(self, keep: Tensor) -> MultimodalSet:
        """The studies with the modalities where ``keep`` (N, 3) is 0 removed."""
        present = self.present * keep
        return MultimodalSet(
            self.radiograph,
            self.ct * present[:, CT, None, None, None, None],
            self.text * present[:, TEXT, None],
            present,
            self.labels,
        )


@dataclass(frozen=True)
class MultimodalEvaluation:
    items: int
    accuracy: float
    recall: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    accuracy_without_ct: float
    accuracy_without_text: float
    radiograph_accuracy: float  # the radiograph branch's own classifier (the heat map's)
    attention: dict[str, float]  # mean attention weight on each modality


def radiograph_of(label: str, seed: int, size: int) -> npt.NDArray[np.float32]:
    """The radiograph of a phantom case in [0, 1] (FAI: the normal radiograph of its seed)."""
    return screen_hip(RADIOGRAPH_STAND_IN.get(label, label), seed, size).image


def ct_of(label: str, seed: int, grid: tuple[int, int, int]) -> npt.NDArray[np.float32]:
    """The CT input of a phantom case, (D, H, W), exactly as serving computes it."""
    return engine_volume(phantom_image(ct_hip(label, seed)), grid=grid)


def multimodal_set(
    spec: EngineSpec,
    per_class: int,
    size: int,
    grid: tuple[int, int, int],
    seed: int,
    encoder: Encoder,
) -> MultimodalSet:
    """``per_class`` phantom studies of each class, every modality present where the case
    has it; seeds ``seed``, ``seed + 1``, ... as :func:`engines.training.data.phantom_set`."""
    if per_class < 1:
        raise DataError(f"per_class: expected at least 1, got {per_class}")
    names = spec.class_names
    radiographs, volumes, texts, labels = [], [], [], []
    for i in range(per_class):
        for label_index, name in enumerate(names):
            item_seed = seed + i * len(names) + label_index
            radiographs.append(radiograph_of(name, item_seed, size))
            volumes.append(ct_of(name, item_seed, grid))
            texts.append(multimodal_case(name, item_seed).text)
            labels.append(label_index)
    pre = Preprocessing(size=size)
    radiograph = (torch.from_numpy(np.stack(radiographs)[:, None]) - pre.mean) / pre.std
    has_text = [bool(t) for t in texts]
    embeddings = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    rows = [n for n, t in enumerate(has_text) if t]
    if rows:
        embeddings[rows] = encoder.encode([texts[n] for n in rows])
    present = torch.tensor([(1.0, 1.0, float(t)) for t in has_text], dtype=torch.float32)
    return MultimodalSet(
        radiograph=radiograph.float(),
        ct=torch.from_numpy(np.stack(volumes)[:, None]),
        text=torch.from_numpy(embeddings),
        present=present,
        labels=torch.tensor(labels, dtype=torch.long),
    )


def zero_init_residual(model: nn.Module) -> None:
    """Start every residual block as the identity (Goyal et al. 2017): trains from scratch
    faster. Initialisation only; the served architecture is unchanged."""
    for module in model.modules():
        if isinstance(module, Bottleneck | Bottleneck3d):
            nn.init.zeros_(module.bn3.weight)


def train_multimodal(
    spec: EngineSpec,
    model: HipMultimodal,
    train_set: MultimodalSet,
    validation: MultimodalSet,
    options: MultimodalOptions,
    checkpoint_dir: Path,
    progress: Callable[[Progress], None] | None = None,
) -> list[EpochSummary]:
    """Train ``model`` in place, in two stages; one summary per stage's epoch (epoch 0: the
    fusion on frozen backbones), best weights restored.

    1. The backbones are frozen at their initialisation, their BatchNorm statistics
       calibrated on training items; the fusion (projections, attention, head) and both
       branches' linear classifiers are fitted on cached pooled features, many steps in
       seconds. Random convolutional features already carry much of the phantoms' signal.
    2. ``epochs`` of end-to-end training (gradients clipped) refine the backbones within
       ``max_seconds``; the validation accuracy picks the stage whose weights are kept.
    """
    options.check()
    torch.manual_seed(options.seed)
    counts = torch.bincount(train_set.labels, minlength=len(spec.findings))
    if bool((counts == 0).any()):
        missing = [spec.class_names[i] for i, c in enumerate(counts.tolist()) if c == 0]
        raise TrainingError(f"training set has no item of class(es) {missing}")
    start_run(checkpoint_dir)
    generator = torch.Generator().manual_seed(options.seed)
    start = time.monotonic()
    stages = 1 + options.epochs
    calibrate_batchnorm(model, train_set, options.calibration_items)
    loss = _fit_fusion(model, train_set, options, generator, stages, progress)
    history: list[EpochSummary] = []
    best = -1.0

    def keep(epoch: int, train_loss: float) -> None:
        nonlocal best
        accuracy = _accuracy(model, validation)
        history.append(EpochSummary(epoch, train_loss, accuracy, time.monotonic() - start))
        log.info("%s stage %d: loss %.4f, validation accuracy %.3f", spec.name, epoch,
                 train_loss, accuracy)  # fmt: skip
        save_epoch(model, checkpoint_dir, epoch, best=accuracy > best)
        best = max(best, accuracy)

    keep(0, loss)
    if options.epochs:
        _fine_tune(spec, model, train_set, options, generator, start, progress, keep)
    load_best(model, checkpoint_dir)
    model.eval()
    return history


def calibrate_batchnorm(model: HipMultimodal, data: MultimodalSet, items: int) -> None:
    """Set every BatchNorm's running statistics to those of the first ``items`` training
    items (a cumulative average over forward passes, no gradients)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    part = data.subset(torch.arange(min(items, len(data))))
    with torch.no_grad():
        for begin in range(0, len(part), 16):
            batch = part.subset(torch.arange(begin, min(begin + 16, len(part))))
            if len(batch) > 1:
                model(batch.radiograph, batch.ct, batch.text, batch.present)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def pooled(
    model: HipMultimodal, data: MultimodalSet, batch_size: int = 32
) -> tuple[Tensor, Tensor]:
    """The radiograph's and the CT's pooled features (N, C) in eval mode."""
    model.eval()
    xr, ct = [], []
    with torch.inference_mode():
        for begin in range(0, len(data), batch_size):
            part = data.subset(torch.arange(begin, min(begin + batch_size, len(data))))
            xr.append(model.radiograph.forward_features(part.radiograph).mean(dim=(2, 3)))
            ct.append(model.ct.forward_features(part.ct).mean(dim=(2, 3, 4)))
    return torch.cat(xr), torch.cat(ct)


def _fit_fusion(
    model: HipMultimodal,
    data: MultimodalSet,
    options: MultimodalOptions,
    g: torch.Generator,
    stages: int,
    progress: Callable[[Progress], None] | None,
) -> float:
    """Stage 1: the fusion and the branches' classifiers on cached pooled features."""
    xr, ct = pooled(model, data)
    heads = [model.project, model.norm, model.attention, model.head, model.radiograph.fc,
             model.ct.fc]  # fmt: skip
    parameters = [p for h in heads for p in h.parameters()] + [model.modality, model.query]
    optimiser = torch.optim.AdamW(
        parameters, lr=options.fusion_learning_rate, weight_decay=options.weight_decay
    )
    steps = options.fusion_steps
    schedule = one_cycle(optimiser, options.fusion_learning_rate, steps, 0.1)
    model.train()
    start = time.monotonic()
    size = min(options.fusion_batch_size, len(data))
    total = 0.0
    for step in range(1, steps + 1):
        index = torch.randint(len(data), (size,), generator=g)
        # Dropping a modality is its ``present`` flag: the attention masks an absent token,
        # so what its zeroed input would have given does not matter.
        present = _dropped(data.subset(index), options, g).present
        labels = data.labels[index]
        logits, _ = model.fuse(xr[index], ct[index], data.text[index] * present[:, TEXT, None],
                               present)  # fmt: skip
        loss = nn.functional.cross_entropy(logits, labels)
        loss = loss + options.radiograph_weight * nn.functional.cross_entropy(
            model.radiograph.fc(xr[index]), labels
        )
        loss = loss + options.ct_weight * nn.functional.cross_entropy(
            model.ct.fc(ct[index]), labels
        )
        optimiser.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimiser.step()
        schedule.step()
        total += float(loss.item())
        if progress:
            progress(Progress("train", 1, stages, step, steps, total / step,
                              time.monotonic() - start))  # fmt: skip
    model.eval()
    return total / steps


def _fine_tune(
    spec: EngineSpec,
    model: HipMultimodal,
    train_set: MultimodalSet,
    options: MultimodalOptions,
    generator: torch.Generator,
    start: float,
    progress: Callable[[Progress], None] | None,
    keep: Callable[[int, float], None],
) -> None:
    """Stage 2: end-to-end epochs with modality dropout and clipped gradients."""
    optimiser = adamw(model.parameters(), options.learning_rate, options.weight_decay)
    steps = math.ceil(len(train_set) / options.batch_size)
    schedule = one_cycle(optimiser, options.learning_rate, steps * options.epochs, 0.2)
    ct_features: list[Tensor] = []
    # The CT branch's last feature map, for its auxiliary loss (the forward pools it away).
    hook = model.ct.get_submodule("stages").register_forward_hook(
        lambda _m, _i, out: ct_features.append(out)
    )
    try:
        for epoch in range(1, options.epochs + 1):
            model.train()
            order = torch.randperm(len(train_set), generator=generator)
            total, done = 0.0, 0
            for step in range(steps):
                index = order[step * options.batch_size : (step + 1) * options.batch_size]
                batch = _dropped(train_set.subset(index), options, generator)
                ct_features.clear()
                logits, xr_logits, _, _ = model(
                    batch.radiograph, batch.ct, batch.text, batch.present
                )
                loss = nn.functional.cross_entropy(logits, batch.labels)
                loss = loss + options.radiograph_weight * nn.functional.cross_entropy(
                    xr_logits, batch.labels
                )
                seen = batch.present[:, CT] > 0
                if options.ct_weight > 0 and bool(seen.any()):
                    ct_logits = model.ct.fc(ct_features[-1].mean(dim=(2, 3, 4)))
                    loss = loss + options.ct_weight * nn.functional.cross_entropy(
                        ct_logits[seen], batch.labels[seen]
                    )
                optimiser.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                # From-scratch backbones under a fitted fusion: a large step would undo it.
                nn.utils.clip_grad_norm_(model.parameters(), options.clip_norm)
                optimiser.step()
                schedule.step()
                total += float(loss.item())
                done += 1
                if progress:
                    progress(Progress("train", 1 + epoch, 1 + options.epochs, step + 1, steps,
                                      total / done, time.monotonic() - start))  # fmt: skip
                if _over(options, start):
                    break
            keep(epoch, total / max(done, 1))
            if _over(options, start):
                log.info("%s: time budget of %.0f s reached", spec.name, options.max_seconds)
                break
    finally:
        hook.remove()


def predict(
    model: HipMultimodal, data: MultimodalSet, batch_size: int = 32
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Fused probabilities (N, K), the radiograph branch's (N, K) and the attention (N, 3)."""
    model.eval()
    fused, radiograph, attention = [], [], []
    with torch.inference_mode():
        for begin in range(0, len(data), batch_size):
            part = data.subset(torch.arange(begin, min(begin + batch_size, len(data))))
            logits, xr_logits, _, weights = model(part.radiograph, part.ct, part.text, part.present)
            fused.append(torch.softmax(logits, dim=1).numpy())
            radiograph.append(torch.softmax(xr_logits, dim=1).numpy())
            attention.append(weights.numpy())
    return np.concatenate(fused), np.concatenate(radiograph), np.concatenate(attention)


def evaluate_multimodal(
    spec: EngineSpec, model: HipMultimodal, data: MultimodalSet
) -> MultimodalEvaluation:
    probabilities, radiograph, attention = predict(model, data)
    truth = data.labels.numpy()
    predicted = probabilities.argmax(axis=1)
    confusion, recall = confusion_and_recall(spec.class_names, truth, predicted)
    return MultimodalEvaluation(
        items=len(data),
        accuracy=float((predicted == truth).mean()),
        recall=recall,
        confusion=confusion.tolist(),
        accuracy_without_ct=_accuracy(model, data.without(CT)),
        accuracy_without_text=_accuracy(model, data.without(TEXT)),
        radiograph_accuracy=float((radiograph.argmax(axis=1) == truth).mean()),
        attention={m: float(attention[:, i].mean()) for i, m in enumerate(MODALITIES)},
    )


def evaluation_record(result: MultimodalEvaluation) -> dict[str, Any]:
    """The manifest's evaluation entry."""
    return {
        "data": "held-out phantoms",
        "items": result.items,
        "accuracy": round(result.accuracy, 4),
        "recall": {k: round(v, 4) for k, v in result.recall.items()},
        "confusion": result.confusion,
        "accuracy_without_ct": round(result.accuracy_without_ct, 4),
        "accuracy_without_text": round(result.accuracy_without_text, 4),
        "radiograph_accuracy": round(result.radiograph_accuracy, 4),
        "attention": {k: round(v, 4) for k, v in result.attention.items()},
    }


def _dropped(batch: MultimodalSet, options: MultimodalOptions, g: torch.Generator) -> MultimodalSet:
    """Modality dropout: each item loses its CT / text with the options' shares."""
    n = len(batch)
    keep = torch.ones(n, len(MODALITIES))
    keep[:, CT] = (torch.rand(n, generator=g) >= options.ct_missing).float()
    keep[:, TEXT] = (torch.rand(n, generator=g) >= options.text_missing).float()
    return batch.masked(keep)


def _accuracy(model: HipMultimodal, data: MultimodalSet) -> float:
    probabilities, _, _ = predict(model, data)
    return float((probabilities.argmax(axis=1) == data.labels.numpy()).mean())


def _over(options: MultimodalOptions, start: float) -> bool:
    return options.max_seconds is not None and time.monotonic() - start > options.max_seconds
