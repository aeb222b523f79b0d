"""PCA per backbone, then cluster-based selection of the most representative components.

Seed 003 reduces the deep features of VGG19, InceptionV3 and ResNet-50 with PCA and keeps
the components a variable-clustering step finds most representative. Within one backbone
PCA components are uncorrelated, so the clustering works across backbones: the components
of all three are grouped by correlation (agglomerative clustering on 1 - |r|), and each
cluster contributes the member with the lowest 1-R^2 ratio, (1 - R^2 with its own cluster's
first principal component) / (1 - R^2 with the nearest other cluster's), as SAS VARCLUS and
its descendants do.

scikit-learn fits it at training time; :class:`FeatureReduction` keeps only plain arrays
(means, components, selected indices) so serving reproduces it exactly, in numpy or inside
the ONNX graph (a subtraction and a matrix product).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.cluster import AgglomerativeClustering
from sklearn.decomposition import PCA

from dicom_node.errors import DicomNodeError

Array = npt.NDArray[np.float64]


class ReductionError(DicomNodeError, ValueError):
    """Features do not fit the reduction (backbones, shapes, too few samples)."""


@dataclass(frozen=True, eq=False)
class FeatureReduction:
    """The fitted reduction: per backbone a PCA (mean, components), then the selected columns."""

    backbones: tuple[str, ...]
    means: tuple[npt.NDArray[np.float32], ...]  # (C_b,) per backbone
    components: tuple[npt.NDArray[np.float32], ...]  # (K_b, C_b) per backbone
    selected: npt.NDArray[np.int64]  # indices into the concatenated components
    # Cluster of each concatenated component; None when not known (a reduction read back
    # from a network's buffers, which keep what serving needs: means, bases, selection).
    clusters: npt.NDArray[np.int64] | None = None

    @property
    def width(self) -> int:
        return int(self.selected.shape[0])

    def names(self) -> tuple[str, ...]:
        """Readable names of the selected components, e.g. ``vgg19.pc3``."""
        labels = [f"{b}.pc{k + 1}" for b, c in zip(self.backbones, self.components, strict=True)
                  for k in range(c.shape[0])]  # fmt: skip
        return tuple(labels[i] for i in self.selected)

    def transform(self, features: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float32]:
        """(N, width) selected components from each backbone's pooled features (N, C_b)."""
        parts = []
        for name, mean, comp in zip(self.backbones, self.means, self.components, strict=True):
            if name not in features:
                raise ReductionError(
                    f"features: missing backbone {name!r} (have {sorted(features)})"
                )
            f = np.asarray(features[name], dtype=np.float32)
            if f.ndim != 2 or f.shape[1] != mean.shape[0]:
                raise ReductionError(
                    f"features[{name!r}]: expected (N, {mean.shape[0]}), got {list(f.shape)}"
                )
            parts.append((f - mean) @ comp.T)
        joined = np.concatenate(parts, axis=1)[:, self.selected]
        out: npt.NDArray[np.float32] = joined.astype(np.float32)
        return out

    def save(self, path: Path) -> None:
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "backbones": np.array(self.backbones),
            "selected": self.selected,
        }
        if self.clusters is not None:
            arrays["clusters"] = self.clusters
        for name, mean, comp in zip(self.backbones, self.means, self.components, strict=True):
            arrays[f"{name}.mean"] = mean
            arrays[f"{name}.components"] = comp
        with path.open("wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> FeatureReduction:
        try:
            with np.load(path) as npz:
                backbones = tuple(str(b) for b in npz["backbones"])
                return cls(
                    backbones=backbones,
                    means=tuple(np.asarray(npz[f"{b}.mean"], np.float32) for b in backbones),
                    components=tuple(
                        np.asarray(npz[f"{b}.components"], np.float32) for b in backbones
                    ),
                    selected=np.asarray(npz["selected"], np.int64),
                    clusters=np.asarray(npz["clusters"], np.int64)
                    if "clusters" in npz.files
                    else None,
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ReductionError(f"{path}: not a feature reduction ({exc})") from exc


def _one_minus_r2_ratio(z: Array, clusters: npt.NDArray[np.int64]) -> Array:
    """Per column: (1 - R^2 own cluster) / (1 - R^2 nearest other cluster)."""
    ids = np.unique(clusters)
    # Each cluster's first principal component (of its standardised members).
    scores: dict[int, Array] = {}
    for c in ids:
        members = z[:, clusters == c]
        if members.shape[1] == 1:
            scores[int(c)] = members[:, 0]
        else:
            u, s, _ = np.linalg.svd(members - members.mean(axis=0), full_matrices=False)
            scores[int(c)] = u[:, 0] * s[0]
    ratio = np.empty(z.shape[1])
    for j in range(z.shape[1]):
        r2 = {c: float(np.corrcoef(z[:, j], v)[0, 1] ** 2) for c, v in scores.items()}
        own = r2.pop(int(clusters[j]))
        nearest = max(r2.values()) if r2 else 0.0
        ratio[j] = (1.0 - own) / max(1.0 - nearest, 1e-12)
    return ratio


def fit_reduction(
    features: Mapping[str, npt.ArrayLike],
    components_per_backbone: int,
    clusters: int,
    backbones: Sequence[str] | None = None,
) -> FeatureReduction:
    """Fit PCA per backbone on training features (N, C_b), then select one component per
    correlation cluster across backbones."""
    names = tuple(backbones or sorted(features))
    if not names:
        raise ReductionError("features: expected at least one backbone, got none")
    arrays = {n: np.asarray(features[n], dtype=np.float64) for n in names}
    samples = {a.shape[0] for a in arrays.values()}
    if len(samples) != 1:
        raise ReductionError(f"features: backbones have different sample counts {sorted(samples)}")
    [n_samples] = samples
    k = min(components_per_backbone, n_samples - 1, *(a.shape[1] for a in arrays.values()))
    if k < 1:
        raise ReductionError(f"features: {n_samples} samples are too few to fit PCA")
    total = k * len(names)
    if not 1 <= clusters <= total:
        raise ReductionError(f"clusters: expected 1 to {total} (the components), got {clusters}")
    means, comps, scores = [], [], []
    for name in names:
        pca = PCA(n_components=k, svd_solver="full").fit(arrays[name])
        means.append(pca.mean_.astype(np.float32))
        comps.append(pca.components_.astype(np.float32))
        scores.append(pca.transform(arrays[name]))
    z = np.concatenate(scores, axis=1)
    z = (z - z.mean(axis=0)) / np.maximum(z.std(axis=0), 1e-12)
    if clusters == total:
        labels = np.arange(total, dtype=np.int64)
    else:
        distance = 1.0 - np.abs(np.corrcoef(z, rowvar=False))
        np.fill_diagonal(distance, 0.0)
        labels = (
            AgglomerativeClustering(n_clusters=clusters, metric="precomputed", linkage="average")
            .fit_predict(np.clip(distance, 0.0, None))
            .astype(np.int64)
        )
    ratio = _one_minus_r2_ratio(z, labels)
    selected = np.array(
        sorted(int(np.flatnonzero(labels == c)[np.argmin(ratio[labels == c])])
               for c in np.unique(labels)),
        dtype=np.int64,
    )  # fmt: skip
    return FeatureReduction(names, tuple(means), tuple(comps), selected, labels)
