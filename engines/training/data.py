"""Training data as tensors: phantom sets and labelled DICOM folders, one shape for both.

A screening set holds hip regions ``ap`` (N, 1, S, S) in canonical
orientation, ``labels`` (N,) and lesion ``masks`` (N, S, S; None when
unknown). A Hip-Net set holds ``ap`` and ``lateral`` (N, 1, S, S),
``lateral_present`` (N,) and the failure ``labels``. Pixels are in [0, 1];
:func:`normalise` applies the manifest's mean and std.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dicom_node.errors import DicomNodeError
from engines.catalog import EngineSpec
from engines.manifest import Preprocessing
from engines.phantoms import prosthesis_hip, screen_hip


class DataError(DicomNodeError, ValueError):
    """A training set cannot be built from what was given."""


@dataclass(frozen=True)
class HipSet:
    """Views of one hip per item; ``lateral``/``lateral_present`` only for dual-view engines."""

    ap: Tensor
    labels: Tensor
    masks: Tensor | None = None  # lesion masks (phantoms); None where unknown (a site's images)
    lateral: Tensor | None = None
    lateral_present: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> HipSet:
        return HipSet(
            ap=self.ap[index],
            labels=self.labels[index],
            masks=None if self.masks is None else self.masks[index],
            lateral=None if self.lateral is None else self.lateral[index],
            lateral_present=None if self.lateral_present is None else self.lateral_present[index],
        )

    def without_laterals(self) -> HipSet:
        """The same hips with every lateral view missing (zeros, ``lateral_present`` 0): how
        a dual-view engine sees a study sent without laterals."""
        if self.lateral is None:
            return self
        return HipSet(
            ap=self.ap,
            labels=self.labels,
            masks=self.masks,
            lateral=torch.zeros_like(self.lateral),
            lateral_present=torch.zeros(len(self)),
        )

    def class_counts(self, num_classes: int) -> list[int]:
        return [int(c) for c in torch.bincount(self.labels, minlength=num_classes)]


def phantom_set(
    spec: EngineSpec,
    per_class: int,
    size: int,
    seed: int,
    lateral_missing: float = 0.0,
) -> HipSet:
    """``per_class`` phantoms of each class; seeds ``seed``, ``seed + 1``, ... (disjoint sets
    come from disjoint seed ranges). ``lateral_missing`` is the share of dual-view items whose
    lateral view is dropped (zeros, ``lateral_present`` 0)."""
    if per_class < 1:
        raise DataError(f"per_class: expected at least 1, got {per_class}")
    if not 0.0 <= lateral_missing < 1.0:
        raise DataError(f"lateral_missing: expected a share in [0, 1), got {lateral_missing}")
    dual = "LATERAL" in spec.views
    names = spec.class_names
    rng = np.random.default_rng(seed)
    ap, lateral, present, labels, masks = [], [], [], [], []
    for i in range(per_class):
        for label_index, name in enumerate(names):
            item_seed = seed + i * len(names) + label_index
            if dual:
                front = prosthesis_hip(name, "AP", item_seed, size)
                side = prosthesis_hip(name, "LATERAL", item_seed, size)
                keep = rng.random() >= lateral_missing
                lateral.append(side.image if keep else np.zeros_like(side.image))
                present.append(1.0 if keep else 0.0)
            else:
                front = screen_hip(name, item_seed, size)
            ap.append(front.image)
            masks.append(front.mask)
            labels.append(label_index)
    return HipSet(
        ap=torch.from_numpy(np.stack(ap)[:, None]),
        labels=torch.tensor(labels, dtype=torch.long),
        masks=torch.from_numpy(np.stack(masks)),
        lateral=torch.from_numpy(np.stack(lateral)[:, None]) if dual else None,
        lateral_present=torch.tensor(present, dtype=torch.float32) if dual else None,
    )


def normalise(images: Tensor, pre: Preprocessing) -> Tensor:
    return (images - pre.mean) / pre.std


def lateral_inputs(part: HipSet, pre: Preprocessing) -> tuple[Tensor, Tensor]:
    """Hip-Net's lateral input and ``lateral_present``: zeros where the view is missing
    (and everywhere for a set without lateral views)."""
    if part.lateral is None or part.lateral_present is None:
        return torch.zeros_like(part.ap), torch.zeros(len(part))
    present = part.lateral_present
    return normalise(part.lateral, pre) * present[:, None, None, None], present


def serving_inputs(part: HipSet, pre: Preprocessing, dual: bool) -> tuple[Tensor, ...]:
    """``part`` as an image engine's serving graph takes it: the normalised AP, and for a
    dual-view engine (``dual``) the lateral and ``lateral_present``."""
    ap = normalise(part.ap, pre)
    return (ap, *lateral_inputs(part, pre)) if dual else (ap,)


def split(data: HipSet, validation_share: float, seed: int) -> tuple[HipSet, HipSet]:
    """A stratified split: each class keeps ``validation_share`` of its items for validation."""
    if not 0.0 < validation_share < 1.0:
        raise DataError(f"validation_share: expected a share in (0, 1), got {validation_share}")
    generator = torch.Generator().manual_seed(seed)
    train_index, val_index = [], []
    for label in torch.unique(data.labels):
        members = torch.nonzero(data.labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = max(1, round(len(members) * validation_share))
        if cut >= len(members):
            raise DataError(
                f"class {int(label)} has {len(members)} item(s): too few to split "
                f"{validation_share:.0%} off for validation"
            )
        val_index.append(members[:cut])
        train_index.append(members[cut:])
    return data.subset(torch.cat(train_index)), data.subset(torch.cat(val_index))


PARTS = ("training", "validation", "test")


def split_by_patient(
    data: HipSet,
    groups: Sequence[str],
    class_names: Sequence[str],
    validation_share: float,
    test_share: float,
    seed: int,
) -> tuple[HipSet, HipSet, HipSet]:
    """Training, validation and test sets, stratified by class, with the items of one patient
    (``groups[i]`` is item i's) on one side. Every class needs items in each part.

    First the fewest patients that give every part an item of every class (a search in a
    seeded order, the smallest patients of the rarest classes first), then every other
    patient to the part furthest below its share of that patient's classes.
    """
    if len(groups) != len(data):
        raise DataError(f"groups: expected one per item ({len(data)}), got {len(groups)}")
    for key, share in (("validation_share", validation_share), ("test_share", test_share)):
        if not 0.0 < share < 1.0:
            raise DataError(f"{key}: expected a share in (0, 1), got {share}")
    if validation_share + test_share >= 1.0:
        raise DataError(
            f"validation_share + test_share: expected below 1, "
            f"got {validation_share} + {test_share}"
        )
    labels = [int(label) for label in data.labels]
    members: dict[str, list[int]] = {}
    for index, key in enumerate(groups):
        members.setdefault(key, []).append(index)
    counts = Counter(labels)
    patients = {c: len({groups[i] for i, label in enumerate(labels) if label == c}) for c in counts}
    for c in sorted(counts):
        if patients[c] < len(PARTS):
            raise DataError(
                f"class {class_names[c]!r} has {counts[c]} item(s) from {patients[c]} patient(s): "
                "too few for training, validation and test (a patient each at least)"
            )
    order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed)).tolist()
    keys = list(members)
    ranked = sorted(
        (keys[i] for i in order), key=lambda k: min(counts[labels[i]] for i in members[k])
    )
    classes_of = {key: [labels[i] for i in members[key]] for key in ranked}
    placed = _cover(classes_of, sorted(counts))
    if placed is None:
        c = min(counts, key=lambda c: (patients[c], counts[c], c))
        raise DataError(
            f"class {class_names[c]!r}: its {counts[c]} item(s) from {patients[c]} patient(s) "
            "cannot give training, validation and test an item each with every patient "
            "on one side; add items of it from other patients"
        )
    shares = (1.0 - validation_share - test_share, validation_share, test_share)
    target = [{c: share * n for c, n in counts.items()} for share in shares]
    have: list[Counter[int]] = [Counter() for _ in PARTS]
    for key, part in placed.items():
        have[part].update(classes_of[key])
    for key in ranked:
        if key in placed:
            continue
        needs = [
            sum((want[c] - got[c]) / want[c] for c in classes_of[key])
            for want, got in zip(target, have, strict=True)
        ]
        placed[key] = needs.index(max(needs))
        have[placed[key]].update(classes_of[key])
    parts: list[list[int]] = [[] for _ in PARTS]
    for key, part in placed.items():
        parts[part].extend(members[key])
    train_set, validation, test = (data.subset(torch.tensor(sorted(p))) for p in parts)
    return train_set, validation, test


def _cover(
    classes_of: dict[str, list[int]], classes: Sequence[int], budget: int = 100_000
) -> dict[str, int] | None:
    """Patients (``classes_of``: each one's item classes, in preference order) placed into
    parts so that every part has an item of every class, or None where no placement does
    (or ``budget`` steps of the search did not find one). Depth-first: the class and part
    with the fewest patients left to fill it first, its smallest patients first."""
    holders = {c: [k for k in classes_of if c in classes_of[k]] for c in classes}
    for c in classes:
        holders[c].sort(key=lambda k: len(classes_of[k]))  # stable: preference order kept
    placed: dict[str, int] = {}
    have: list[Counter[int]] = [Counter() for _ in PARTS]
    steps = 0

    def solve() -> bool:
        nonlocal steps
        steps += 1
        gaps = [(c, p) for c in classes for p in range(len(PARTS)) if not have[p][c]]
        if not gaps:
            return True
        free = {c: [k for k in holders[c] if k not in placed] for c in classes}
        if steps > budget or any(
            len(free[c]) < sum(1 for p in range(len(PARTS)) if not have[p][c]) for c in classes
        ):
            return False
        c, p = min(gaps, key=lambda gap: len(free[gap[0]]))
        for key in free[c]:
            placed[key] = p
            have[p].update(classes_of[key])
            if solve():
                return True
            del placed[key]
            have[p].subtract(classes_of[key])
        return False

    return placed if solve() else None
