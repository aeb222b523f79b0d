"""Training the osteoporosis engine (seed 003) on phantom patients: radiograph + clinical variables.

Each phantom patient draws its radiograph (:func:`engines.phantoms.osteoporosis.osteoporosis_hip`,
bone less dense under osteoporosis) and its clinical variables
(:func:`engines.phantoms.clinical.osteoporosis_case`, read as serving reads them:
``variables.as_vector(standardise=True)``) from one seed and label.

The paper extracts features with ImageNet-pretrained VGG19, InceptionV3 and ResNet-50 and
keeps them frozen. No pretrained weights exist here. The demo profile uses the three
backbones frozen at their random initialisation (``backbone_steps = 0``): random
convolutional features, pooled, keep the image statistics that bone density changes, and
on the demo phantoms their selected components alone separate the classes (held-out ROC
AUC about 0.96 with logistic regression), while training three backbones on a 2-core CPU
would cost minutes. ``backbone_steps > 0`` first trains the backbones briefly as
osteoporosis classifiers (each through its own linear layer, not served), for a site that
has no pretrained weights either. Then, as in the paper: pooled features of the training
set -> PCA per backbone -> one component per correlation cluster
(:func:`engines.osteoporosis.fit_reduction`) -> the FusionHead's input scaling -> the
FusionHead trained on the selected components, the clinical values and their missing mask.
The network packaged is the whole graph (image, clinical, missing -> logits).

Random features are not pretrained ones: the demo shows the pipeline, its figures say
nothing about real radiographs.

The evaluation runs that graph on held-out phantom patients (accuracy, ROC AUC, recall),
and the permutation importance of the input groups (the image components as one group,
each clinical variable with its missing flag) on the same patients.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from dicom_node.clinical import VECTOR_FIELDS
from engines.catalog import EngineSpec
from engines.manifest import Preprocessing
from engines.models.osteoporosis import OsteoporosisNet
from engines.osteoporosis.importance import (
    Importance,
    permutation_importance,
    plot_importance,
    roc_auc,
)
from engines.osteoporosis.reduction import FeatureReduction, fit_reduction
from engines.phantoms.clinical import osteoporosis_case
from engines.phantoms.osteoporosis import osteoporosis_hip
from engines.training.batch_norm import recompute_running_stats
from engines.training.data import DataError
from engines.training.evaluate import confusion_and_recall
from engines.training.loop import Progress, TrainingError
from engines.training.optimiser import adamw, one_cycle

log = logging.getLogger(__name__)

# Importance groups over the clinical columns: each variable with its missing flag.
CLINICAL_GROUPS: Mapping[str, tuple[str, ...]] = {
    "age": ("age",),
    "sex": ("sex_female", "sex_male", "sex_other"),
    "height": ("height",),
    "weight": ("weight",),
    "bmi": ("bmi",),
}
IMPORTANCE_PLOT = "importance.png"


@dataclass(frozen=True)
class OsteoporosisOptions:
    components_per_backbone: int = 6  # PCA components kept per backbone
    clusters: int = 12  # correlation clusters = selected components = the head's image width
    backbone_steps: int = 0  # brief training of the backbones before they are frozen
    # BatchNorm statistics of the frozen backbones recomputed from this many training images:
    # a random initialisation's defaults (mean 0, variance 1) let activations grow layer by
    # layer (~1e7 in InceptionV3's last blocks), past fp16's range (65504).
    batch_norm_items: int = 128
    backbone_batch_size: int = 16
    backbone_learning_rate: float = 2e-3
    head_steps: int = 300
    head_batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    importance_repeats: int = 10
    seed: int = 0
    max_seconds: float | None = None  # bounds the backbone training (the rest is short)

    def check(self) -> None:
        for name in ("components_per_backbone", "clusters", "head_steps"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name}: expected at least 1, got {getattr(self, name)}")
        if self.backbone_steps < 0:
            raise TrainingError(f"backbone_steps: expected >= 0, got {self.backbone_steps}")
        if self.batch_norm_items < 0:
            raise TrainingError(f"batch_norm_items: expected >= 0, got {self.batch_norm_items}")
        for name in ("backbone_batch_size", "head_batch_size"):
            if getattr(self, name) < 2:
                raise TrainingError(f"{name}: expected at least 2, got {getattr(self, name)}")
        rates = (self.learning_rate, self.backbone_learning_rate)
        if not all(math.isfinite(r) and r > 0 for r in rates):
            raise TrainingError(
                f"learning rates: expected numbers > 0, got {self.learning_rate} and "
                f"{self.backbone_learning_rate}"
            )


@dataclass(frozen=True)
class OsteoporosisSet:
    """Phantom patients as serving feeds them: ``image`` (N,1,S,S) normalised, ``clinical``
    (N,7) standardised values, ``missing`` (N,7) 0/1, ``labels`` (N,)."""

    image: Tensor
    clinical: Tensor
    missing: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> OsteoporosisSet:
        return OsteoporosisSet(
            self.image[index], self.clinical[index], self.missing[index], self.labels[index]
        )


@dataclass(frozen=True)
class OsteoporosisEvaluation:
    items: int
    accuracy: float
    roc_auc: float
    recall: dict[str, float]
    confusion: list[list[int]]
    importance: list[Importance]


def clinical_inputs(
    label: str, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The case's ``(clinical, missing)`` inputs, as serving computes them from its header."""
    values, missing = osteoporosis_case(label, seed).variables.as_vector(standardise=True)
    return values, missing.astype(np.float32)


def osteoporosis_set(spec: EngineSpec, per_class: int, size: int, seed: int) -> OsteoporosisSet:
    """``per_class`` phantom patients of each class; seeds as in
    :func:`engines.training.data.phantom_set`."""
    if per_class < 1:
        raise DataError(f"per_class: expected at least 1, got {per_class}")
    names = spec.class_names
    images, values, gone, labels = [], [], [], []
    for i in range(per_class):
        for label_index, name in enumerate(names):
            item_seed = seed + i * len(names) + label_index
            images.append(osteoporosis_hip(name, item_seed, size).image)
            v, m = clinical_inputs(name, item_seed)
            values.append(v)
            gone.append(m)
            labels.append(label_index)
    pre = Preprocessing(size=size)
    image = (torch.from_numpy(np.stack(images)[:, None]) - pre.mean) / pre.std
    return OsteoporosisSet(
        image=image.float(),
        clinical=torch.from_numpy(np.stack(values)),
        missing=torch.from_numpy(np.stack(gone)),
        labels=torch.tensor(labels, dtype=torch.long),
    )


def train_backbones(
    model: OsteoporosisNet,
    data: OsteoporosisSet,
    options: OsteoporosisOptions,
    progress: Callable[[Progress], None] | None = None,
) -> float:
    """Train each backbone briefly as an image-only classifier (its own linear layer);
    returns the last mean loss (0.0 without steps)."""
    if options.backbone_steps == 0:
        return 0.0
    backbones = [model.backbones[name] for name in model.backbone_names]
    parameters = [p for b in backbones for p in b.parameters()]
    optimiser = adamw(parameters, options.backbone_learning_rate, 1e-4)
    schedule = one_cycle(optimiser, options.backbone_learning_rate, options.backbone_steps, 0.2)
    generator = torch.Generator().manual_seed(options.seed)
    start = time.monotonic()
    total, done = 0.0, 0
    for b in backbones:
        b.train()
    per_epoch = max(1, len(data) // options.backbone_batch_size)
    order = torch.randperm(len(data), generator=generator)
    for step in range(options.backbone_steps):
        at = step % per_epoch
        if at == 0 and step:
            order = torch.randperm(len(data), generator=generator)
        index = order[at * options.backbone_batch_size : (at + 1) * options.backbone_batch_size]
        batch = data.subset(index)
        loss = sum(
            (nn.functional.cross_entropy(b(batch.image), batch.labels) for b in backbones),
            torch.zeros(()),
        ) / len(backbones)
        optimiser.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimiser.step()
        schedule.step()
        total, done = total + float(loss.item()), done + 1
        if progress:
            elapsed = time.monotonic() - start
            progress(Progress("train", 1, 2, step + 1, options.backbone_steps, total / done,
                              elapsed))  # fmt: skip
        if options.max_seconds is not None and time.monotonic() - start > options.max_seconds:
            log.info("osteoporosis backbones: time budget of %.0f s reached", options.max_seconds)
            break
    return total / max(done, 1)


def pooled_features(
    model: OsteoporosisNet, images: Tensor, batch_size: int = 32
) -> dict[str, npt.NDArray[np.float32]]:
    """Each backbone's pooled features (N, C_b) in eval mode."""
    model.eval()
    parts: dict[str, list[npt.NDArray[np.float32]]] = {n: [] for n in model.backbone_names}
    with torch.inference_mode():
        for begin in range(0, images.shape[0], batch_size):
            for name, f in model.pooled_features(images[begin : begin + batch_size]).items():
                parts[name].append(f.numpy())
    return {name: np.concatenate(p) for name, p in parts.items()}


def fit_osteoporosis(
    model: OsteoporosisNet,
    train_set: OsteoporosisSet,
    validation: OsteoporosisSet,
    options: OsteoporosisOptions,
    progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Backbones (briefly), reduction, scaling and head, in place; returns the training record."""
    options.check()
    if model.components != options.clusters:
        raise TrainingError(
            f"clusters: the network's head takes {model.components} components, the options "
            f"select {options.clusters}"
        )
    for label in range(2):
        if not bool((train_set.labels == label).any()):
            raise TrainingError(f"training set has no item of class {label}")
    torch.manual_seed(options.seed)
    start = time.monotonic()
    backbone_loss = train_backbones(model, train_set, options, progress)
    calibrated = recompute_running_stats(
        model.backbones,
        len(train_set),
        lambda index: model.pooled_features(train_set.image[index]),
        options.batch_norm_items,
        seed=options.seed,
    )
    backbone_seconds = time.monotonic() - start
    reduction = fit_reduction(
        pooled_features(model, train_set.image),
        options.components_per_backbone,
        options.clusters,
        backbones=model.backbone_names,
    )
    model.set_reduction(reduction)
    train_components = _components(reduction, model, train_set.image)
    val_components = _components(reduction, model, validation.image)
    model.head.fit_scaling(train_components, train_set.clinical, train_set.missing)
    head = _train_head(model, train_components, train_set, val_components, validation, options,
                       progress)  # fmt: skip
    model.eval()
    return {
        "backbone_steps": options.backbone_steps,
        "backbone_loss": round(backbone_loss, 5),
        "backbone_seconds": round(backbone_seconds, 1),
        "batch_norm_items": calibrated,
        "selected_components": list(reduction.names()),
        **head,
    }


def evaluate_osteoporosis(
    spec: EngineSpec,
    model: OsteoporosisNet,
    data: OsteoporosisSet,
    repeats: int = 10,
    seed: int = 0,
) -> OsteoporosisEvaluation:
    """The served graph on ``data``, then the permutation importance of its input groups."""
    model.eval()
    with torch.inference_mode():
        components = torch.cat(
            [model.image_components(data.image[b : b + 32]) for b in range(0, len(data), 32)]
        )
    inputs = torch.cat([components, data.clinical, data.missing], dim=1).numpy()
    predict = _head_predictor(model)
    p = predict(inputs)
    truth = data.labels.numpy()
    predicted = (p >= 0.5).astype(np.int64)
    confusion, recall = confusion_and_recall(spec.class_names, truth, predicted)
    groups = importance_groups(model.components)
    importance = permutation_importance(predict, inputs, truth, groups, repeats, seed)
    return OsteoporosisEvaluation(
        items=len(data),
        accuracy=float((predicted == truth).mean()),
        roc_auc=roc_auc(truth, p),
        recall=recall,
        confusion=confusion.tolist(),
        importance=importance,
    )


def importance_groups(components: int) -> dict[str, list[int]]:
    """Columns of ``[components | clinical | missing]`` per group: "image", each variable."""
    width = len(VECTOR_FIELDS)
    groups = {"image": list(range(components))}
    for name, fields in CLINICAL_GROUPS.items():
        columns = [components + VECTOR_FIELDS.index(f) for f in fields]
        groups[name] = columns + [c + width for c in columns]
    return groups


def evaluation_record(result: OsteoporosisEvaluation) -> dict[str, Any]:
    """The manifest's evaluation entry."""
    return {
        "data": "held-out phantoms",
        "items": result.items,
        "accuracy": round(result.accuracy, 4),
        "roc_auc": round(result.roc_auc, 4),
        "recall": {k: round(v, 4) for k, v in result.recall.items()},
        "confusion": result.confusion,
        "importance": [
            {"name": i.name, "mean": round(i.mean, 4), "std": round(i.std, 4)}
            for i in result.importance
        ],
    }


def write_importance_plot(importance: Sequence[Importance], folder: Path) -> str:
    """The importance bar chart as ``folder/importance.png``; returns its relative path."""
    plot_importance(
        importance, folder / IMPORTANCE_PLOT, "Osteoporosis engine: held-out phantom patients"
    )
    return IMPORTANCE_PLOT


def _components(reduction: FeatureReduction, model: OsteoporosisNet, images: Tensor) -> Tensor:
    return torch.from_numpy(reduction.transform(pooled_features(model, images)))


def _head_predictor(
    model: OsteoporosisNet,
) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]:
    """``[components | clinical | missing]`` (N, F) -> P(osteoporosis) (N,), by the head."""
    k, width = model.components, model.head.clinical_width

    def predict(inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        with torch.inference_mode():
            logits = model.head(x[:, :k], x[:, k : k + width], x[:, k + width :])
        out: npt.NDArray[np.float64] = torch.softmax(logits, dim=1)[:, 1].double().numpy()
        return out

    return predict


def _train_head(
    model: OsteoporosisNet,
    components: Tensor,
    data: OsteoporosisSet,
    val_components: Tensor,
    validation: OsteoporosisSet,
    options: OsteoporosisOptions,
    progress: Callable[[Progress], None] | None,
) -> dict[str, Any]:
    """AdamW on the head; the weights with the lowest validation loss are kept."""
    head = model.head
    optimiser = torch.optim.AdamW(
        head.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay
    )
    generator = torch.Generator().manual_seed(options.seed + 1)
    start = time.monotonic()
    best, best_state, best_step = math.inf, None, 0
    total = 0.0
    size = min(options.head_batch_size, len(data))
    stage = 2 if options.backbone_steps else 1
    for step in range(1, options.head_steps + 1):
        head.train()
        index = torch.randint(len(data), (size,), generator=generator)
        logits = head(components[index], data.clinical[index], data.missing[index])
        loss = nn.functional.cross_entropy(logits, data.labels[index])
        optimiser.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimiser.step()
        total += float(loss.item())
        if step % 10 == 0 or step == options.head_steps:
            head.eval()
            with torch.inference_mode():
                val = float(
                    nn.functional.cross_entropy(
                        head(val_components, validation.clinical, validation.missing),
                        validation.labels,
                    )
                )
            if val < best:
                best, best_step = val, step
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        if progress:
            progress(Progress("train", stage, stage, step, options.head_steps, total / step,
                              time.monotonic() - start))  # fmt: skip
    if best_state is not None:
        head.load_state_dict(best_state)
    return {
        "head_steps": options.head_steps,
        "head_loss": round(total / options.head_steps, 5),
        "best_step": best_step,
        "validation_loss": round(best, 5),
        "head_seconds": round(time.monotonic() - start, 1),
    }
