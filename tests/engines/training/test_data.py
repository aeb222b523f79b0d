from __future__ import annotations

import pytest
import torch
from hip_sets import indices, numbered

from engines.catalog import engine_spec
from engines.training.data import DataError, phantom_set, split, split_by_patient


def test_phantom_set_for_one_view_engine() -> None:
    data = phantom_set(engine_spec("hip_screen"), 2, 64, seed=5)
    assert data.ap.shape == (16, 1, 64, 64) and data.ap.dtype == torch.float32
    assert data.labels.tolist() == list(range(8)) * 2
    assert data.lateral is None and data.lateral_present is None
    assert not data.masks[data.labels == 0].any()  # normal hips have no lesion
    assert all(data.masks[i].any() for i in range(16) if data.labels[i] != 0)
    again = phantom_set(engine_spec("hip_screen"), 2, 64, seed=5)
    assert torch.equal(data.ap, again.ap)


def test_phantom_set_for_hipnet_drops_lateral_views_on_request() -> None:
    data = phantom_set(engine_spec("hipnet"), 4, 64, seed=0, lateral_missing=0.5)
    assert data.lateral is not None and data.lateral_present is not None
    missing = data.lateral_present == 0
    assert 0 < int(missing.sum()) < 20
    assert data.lateral[missing].abs().max() == 0
    assert data.lateral[~missing].abs().max() > 0
    assert data.class_counts(5) == [4] * 5


def test_without_laterals_removes_every_lateral_view() -> None:
    data = phantom_set(engine_spec("hipnet"), 1, 64, seed=0)
    alone = data.without_laterals()
    assert alone.lateral is not None and alone.lateral_present is not None
    assert alone.lateral.shape == data.lateral.shape and alone.lateral.abs().max() == 0  # type: ignore[union-attr]
    assert alone.lateral_present.tolist() == [0.0] * 5
    assert torch.equal(alone.ap, data.ap) and torch.equal(alone.labels, data.labels)
    single = phantom_set(engine_spec("hip_screen"), 1, 64, seed=0)
    assert single.without_laterals() is single


def test_split_is_stratified_and_disjoint() -> None:
    data = phantom_set(engine_spec("hip_screen"), 5, 64, seed=0)
    train, validation = split(data, 0.2, seed=1)
    assert train.class_counts(8) == [4] * 8 and validation.class_counts(8) == [1] * 8
    pairs = {tuple(x.flatten()[:50].tolist()) for x in train.ap}
    assert not any(tuple(x.flatten()[:50].tolist()) in pairs for x in validation.ap)


def test_bad_requests() -> None:
    spec = engine_spec("hip_screen")
    with pytest.raises(DataError, match="per_class: expected at least 1, got 0"):
        phantom_set(spec, 0, 64, seed=0)
    with pytest.raises(DataError, match=r"lateral_missing: expected a share in \[0, 1\), got 1.0"):
        phantom_set(spec, 1, 64, seed=0, lateral_missing=1.0)
    data = phantom_set(spec, 1, 64, seed=0)
    with pytest.raises(DataError, match=r"validation_share: expected a share in \(0, 1\), got 0"):
        split(data, 0, seed=0)
    with pytest.raises(
        DataError, match=r"^class \d+ has 1 item\(s\): too few to split 50% off for validation"
    ):
        split(data, 0.5, seed=0)


CLASSES = engine_spec("hip_screen").class_names


def test_split_by_patient_keeps_a_patients_hips_together() -> None:
    # 30 AP pelvises, two hips each (the second hip's class differs from the first's now and
    # then), and 6 single-hip files.
    labels, groups = [], []
    for f in range(30):
        labels += [f % 3, (f % 3 + f // 10) % 3]
        groups += [f"pelvis{f}.dcm"] * 2
    labels += [0, 1, 2] * 2
    groups += [f"hip{f}.dcm" for f in range(6)]
    data = numbered(labels)
    train, validation, test = split_by_patient(data, groups, CLASSES, 0.2, 0.2, seed=3)
    parts = [indices(p) for p in (train, validation, test)]
    assert sorted(i for p in parts for i in p) == list(range(len(data)))  # each item once
    files = [{groups[i] for i in p} for p in parts]
    assert not files[0] & files[1] and not files[0] & files[2] and not files[1] & files[2]
    for part in (train, validation, test):
        assert all(n > 0 for n in part.class_counts(3))
    assert 0.5 < len(train) / len(data) < 0.7 and abs(len(validation) - len(test)) <= 4
    again = split_by_patient(data, groups, CLASSES, 0.2, 0.2, seed=3)
    assert [indices(p) for p in again] == parts
    assert [indices(p) for p in split_by_patient(data, groups, CLASSES, 0.2, 0.2, seed=4)] != parts


@pytest.mark.parametrize(
    ("labels", "groups", "shares", "match"),
    [
        ([0, 0, 0], ["a", "b"], (0.2, 0.2), r"groups: expected one per item \(3\), got 2"),
        (
            [0] * 3,
            list("abc"),
            (0.0, 0.2),
            r"validation_share: expected a share in \(0, 1\), got 0",
        ),
        ([0] * 3, list("abc"), (0.2, 1.0), r"test_share: expected a share in \(0, 1\), got 1"),
        (
            [0] * 3,
            list("abc"),
            (0.5, 0.5),
            r"validation_share \+ test_share: expected below 1, got 0\.5 \+ 0\.5",
        ),
        # Four rows of osteoarthritis, but both hips of two pelvises: two patients.
        (
            [0, 0, 0, 1, 1, 1, 1],
            list("abcddee"),
            (0.2, 0.2),
            r"class 'osteoarthritis' has 4 item\(s\) from 2 patient\(s\): too few for training, "
            r"validation and test",
        ),
    ],
)
def test_split_by_patient_refusals(
    labels: list[int], groups: list[str], shares: tuple[float, float], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        split_by_patient(numbered(labels), groups, CLASSES, *shares, seed=0)


def test_split_by_patient_refuses_patients_that_cannot_be_placed() -> None:
    # Four files, each holding three of four classes: every pair of files shares a class, so
    # two files in one part leave that class out of another part.
    files = {"f1": [0, 1, 2], "f2": [0, 1, 3], "f3": [0, 2, 3], "f4": [1, 2, 3]}
    labels = [c for cs in files.values() for c in cs]
    groups = [f for f, cs in files.items() for _ in cs]
    with pytest.raises(
        DataError,
        match=r"class '\w+': its 3 item\(s\) from 3 patient\(s\) cannot give training, "
        r"validation and test an item each with every patient on one side",
    ):
        split_by_patient(numbered(labels), groups, CLASSES, 0.2, 0.2, seed=0)


def test_split_by_patient_finds_a_placement_where_one_exists() -> None:
    # Every class has three patients, but placing them greedily (the rarest first, each to
    # the part lacking one of its classes) left one part without a class.
    patients = [[0, 2], [2, 1], [1, 2], [0, 1], [0, 0], [0]]
    labels = [c for classes in patients for c in classes]
    groups = [f"p{n}" for n, classes in enumerate(patients) for _ in classes]
    for seed in range(4):
        parts = split_by_patient(numbered(labels), groups, CLASSES, 0.2, 0.2, seed=seed)
        assert all(n > 0 for part in parts for n in part.class_counts(3))


def test_split_by_patient_refuses_only_what_no_placement_can_split() -> None:
    import itertools
    import random

    rng = random.Random(0)
    outcomes = []
    for _ in range(300):
        # Up to six patients holding two or three of four classes: small enough to try every
        # placement, and about a quarter of those with three patients per class cannot split.
        patients = [rng.sample(range(4), rng.randint(2, 3)) for _ in range(rng.randint(3, 6))]
        labels = [c for classes in patients for c in classes]
        groups = [f"p{n}" for n, classes in enumerate(patients) for _ in classes]
        possible = any(
            all(any(c in patients[n] for n, p in enumerate(placing) if p == part)
                for c in set(labels) for part in range(3))
            for placing in itertools.product(range(3), repeat=len(patients))
        )  # fmt: skip
        if all(sum(c in classes for classes in patients) >= 3 for c in set(labels)):
            outcomes.append(possible)
            try:
                parts = split_by_patient(numbered(labels), groups, CLASSES, 0.2, 0.2, seed=0)
            except DataError:
                assert not possible, patients
            else:
                assert possible
                assert all(part.class_counts(4)[c] > 0 for part in parts for c in set(labels))
    assert outcomes.count(True) > 20 and outcomes.count(False) > 5


def test_split_by_patient_keeps_each_class_near_its_shares() -> None:
    # 2000 patients of one or two hips, common and rare classes mixed: filling each part by
    # its absolute shortfall gave training ~64 % of the rarer classes (its target is largest).
    import random

    rng = random.Random(1)
    labels, groups = [], []
    for patient in range(2000):
        for _ in range(rng.randint(1, 2)):
            labels.append(min(int(rng.expovariate(0.7)), 4))
            groups.append(f"p{patient}")
    parts = split_by_patient(numbered(labels), groups, CLASSES, 0.2, 0.2, seed=0)
    counts = [part.class_counts(5) for part in parts]
    for c in range(5):
        total = sum(part[c] for part in counts)
        assert [round(part[c] / total, 2) for part in counts] == [0.6, 0.2, 0.2], (c, counts)
