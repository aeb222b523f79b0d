"""Permutation importance of the osteoporosis engine's inputs, and its plot.

Each input group (one clinical variable, or the image components as one group, or each
component) is shuffled across the evaluation set; the importance is the mean drop of the
score (ROC AUC by default) over repeats. matplotlib draws the bar chart (Agg backend: no
display needed); the engine ships it as a PNG and the SR summarises the top groups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicom_node.errors import DicomNodeError

Matrix = npt.NDArray[np.float32]


class ImportanceError(DicomNodeError, ValueError):
    """Inputs of the importance analysis do not fit together."""


@dataclass(frozen=True)
class Importance:
    name: str
    mean: float  # mean drop of the score when this group is shuffled
    std: float


def roc_auc(labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        raise ImportanceError("roc_auc: needs both classes among the labels")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def permutation_importance(
    predict: Callable[[Matrix], npt.NDArray[np.float64]],
    inputs: Matrix,
    labels: npt.NDArray[np.int64],
    groups: Mapping[str, Sequence[int]],
    repeats: int = 10,
    seed: int = 0,
) -> list[Importance]:
    """Importance of each named group of input columns, most important first.

    ``predict`` maps inputs (N, F) to the positive-class probability (N,).
    """
    if inputs.ndim != 2 or inputs.shape[0] != labels.shape[0]:
        raise ImportanceError(
            f"inputs: expected (N, F) with N = {labels.shape[0]} labels, got {list(inputs.shape)}"
        )
    for name, columns in groups.items():
        bad = [c for c in columns if not 0 <= c < inputs.shape[1]]
        if bad or not columns:
            raise ImportanceError(
                f"groups[{name!r}]: columns {list(columns)} not within 0-{inputs.shape[1] - 1}"
            )
    rng = np.random.default_rng(seed)
    base = roc_auc(labels, predict(inputs))
    result = []
    for name, columns in groups.items():
        drops = []
        for _ in range(repeats):
            shuffled = inputs.copy()
            order = rng.permutation(inputs.shape[0])
            shuffled[:, list(columns)] = inputs[order][:, list(columns)]
            drops.append(base - roc_auc(labels, predict(shuffled)))
        result.append(Importance(name, float(np.mean(drops)), float(np.std(drops))))
    return sorted(result, key=lambda i: -i.mean)


def plot_importance(importances: Sequence[Importance], path: Path, title: str) -> Path:
    """A horizontal bar chart (mean drop of ROC AUC with its spread) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = list(reversed(importances))
    fig, ax = plt.subplots(figsize=(7.0, 0.35 * len(shown) + 1.5), dpi=120)
    try:
        ax.barh([i.name for i in shown], [i.mean for i in shown], xerr=[i.std for i in shown],
                color="#3b6ea8")  # fmt: skip
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("drop of ROC AUC when shuffled (permutation importance)")
        ax.set_title(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
