"""Evaluation on held-out data: accuracy, per-class recall, confusion, and the pointing game.

The pointing game asks whether the heat map's peak falls inside the lesion: the
feature-map cell with the highest value for the true class (Grad-CAM for the
screening engine, the interpretive probability map for Hip-Net) must overlap
the lesion mask. The map's resolution is the feature map's (input / 32), so a
hit localises the lesion to that cell's block of pixels, not to a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.catalog import EngineSpec
from engines.gradcam import grad_cam
from engines.manifest import Preprocessing
from engines.models.hipnet import HipNet
from engines.serving import gem_exponent, head_weights, serving_graph
from engines.training.data import HipSet, lateral_inputs, normalise


@dataclass(frozen=True)
class Evaluation:
    items: int
    accuracy: float
    recall: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    pointing_game: float | None  # share of positive items whose peak hits the lesion
    positives: int
    # A dual-view engine's accuracy on the same items with every lateral view missing.
    accuracy_without_lateral: float | None = None


def predict(
    model: nn.Module, data: HipSet, pre: Preprocessing, batch_size: int = 32, heatmaps: bool = True
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """Class probabilities (N, K) and, if asked, each item's true-class map (N, h, w)."""
    model.eval()
    probabilities: list[npt.NDArray[np.float32]] = []
    maps: list[npt.NDArray[np.float32]] = []
    fc, p_gem = None, None
    graph = serving_graph(model)
    if heatmaps and not isinstance(model, HipNet):
        fc, p_gem = head_weights(model)[0].numpy(), gem_exponent(model)
    with torch.inference_mode():
        for begin in range(0, len(data), batch_size):
            part = data.subset(torch.arange(begin, min(begin + batch_size, len(data))))
            ap = normalise(part.ap, pre)
            if isinstance(model, HipNet):
                lateral, present = lateral_inputs(part, pre)
                p, class_maps, _ = model(ap, lateral, present)
                probabilities.append(p.numpy())
                if heatmaps:
                    chosen = class_maps[torch.arange(len(part)), part.labels]
                    maps.append(chosen.numpy())
                continue
            logits, features = graph(ap)
            probabilities.append(torch.softmax(logits, dim=1).numpy())
            if heatmaps and fc is not None:
                f = features.numpy()
                maps.append(
                    np.stack(
                        [
                            grad_cam(f[i : i + 1], fc, int(c), p_gem)[0]
                            for i, c in enumerate(part.labels)
                        ]
                    )
                )
    return np.concatenate(probabilities), (np.concatenate(maps) if heatmaps else None)


def confusion_and_recall(
    classes: tuple[str, ...], truth: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], dict[str, float]]:
    """The confusion matrix (rows: true class, columns: predicted) and each class's recall
    (NaN for a class absent from ``truth``)."""
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    recall = {
        name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else float("nan")
        for i, name in enumerate(classes)
    }
    return confusion, recall


def evaluate(
    spec: EngineSpec,
    model: nn.Module,
    data: HipSet,
    pre: Preprocessing,
    heatmaps: bool = True,
    ap_alone: bool = False,
) -> Evaluation:
    """Accuracy, recall, confusion and (with ``heatmaps``) the pointing game on ``data``;
    with ``ap_alone``, for a set with lateral views, also the accuracy without them."""
    probabilities, maps = predict(model, data, pre, heatmaps=heatmaps)
    truth = data.labels.numpy()
    predicted = probabilities.argmax(axis=1)
    confusion, recall = confusion_and_recall(spec.class_names, truth, predicted)
    pointing = None
    positives = 0
    if maps is not None and data.masks is not None:
        masks = data.masks.numpy()
        positive = [i for i in range(len(data)) if masks[i].any()]
        positives = len(positive)
        if positive:
            hits = sum(peak_hits_mask(maps[i], masks[i]) for i in positive)
            pointing = hits / len(positive)
    without_lateral = None
    if ap_alone and data.lateral is not None:
        alone, _ = predict(model, data.without_laterals(), pre, heatmaps=False)
        without_lateral = float((alone.argmax(axis=1) == truth).mean())
    return Evaluation(
        items=len(data),
        accuracy=float((predicted == truth).mean()),
        recall=recall,
        confusion=confusion.tolist(),
        pointing_game=pointing,
        positives=positives,
        accuracy_without_lateral=without_lateral,
    )


def peak_hits_mask(heatmap: npt.NDArray[np.floating], mask: npt.NDArray[np.bool_]) -> bool:
    """Whether the block of pixels under the map's peak cell holds any lesion pixel. A map
    without a peak (all cells equal: a Grad-CAM with nothing left after its ReLU) points
    nowhere, a miss; argmax would have picked the first cell."""
    if not np.ptp(heatmap) > 0:
        return False
    h, w = heatmap.shape
    rows, cols = mask.shape
    r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    top, bottom = (r * rows) // h, ((r + 1) * rows + h - 1) // h
    left, right = (c * cols) // w, ((c + 1) * cols + w - 1) // w
    return bool(mask[top:bottom, left:right].any())
