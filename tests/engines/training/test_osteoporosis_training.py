"""Osteoporosis training on a handful of tiny phantom patients (the real profile: `make demo`)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from dicom_node.clinical import VECTOR_FIELDS
from engines.catalog import engine_spec
from engines.models import create
from engines.models.osteoporosis import OsteoporosisNet
from engines.phantoms import osteoporosis_hip
from engines.phantoms.clinical import osteoporosis_case
from engines.training.data import DataError
from engines.training.loop import Progress, TrainingError
from engines.training.osteoporosis import (
    OsteoporosisOptions,
    OsteoporosisSet,
    clinical_inputs,
    evaluate_osteoporosis,
    evaluation_record,
    fit_osteoporosis,
    importance_groups,
    osteoporosis_set,
    train_backbones,
)

SPEC = engine_spec("osteoporosis")
TINY = OsteoporosisOptions(
    components_per_backbone=2,
    clusters=4,
    backbone_steps=1,
    backbone_batch_size=4,
    head_steps=12,
    head_batch_size=4,
    importance_repeats=2,
)


@pytest.fixture(scope="module")
def patients() -> OsteoporosisSet:
    return osteoporosis_set(SPEC, 4, 80, 0)


@pytest.fixture(scope="module")
def network() -> OsteoporosisNet:
    """One network for the module: creating three backbones takes seconds."""
    torch.manual_seed(0)
    model = create("osteoporosis", clinical_width=len(VECTOR_FIELDS), components=TINY.clusters)
    assert isinstance(model, OsteoporosisNet)
    return model


def test_the_set_holds_what_serving_feeds(patients: OsteoporosisSet) -> None:
    assert patients.image.shape == (8, 1, 80, 80)
    assert patients.clinical.shape == patients.missing.shape == (8, len(VECTOR_FIELDS))
    assert patients.labels.tolist() == [0, 1] * 4  # no_osteoporosis, osteoporosis
    for n in range(8):
        label, seed = SPEC.class_names[n % 2], n
        expected = (osteoporosis_hip(label, seed, 80).image - 0.5) / 0.25
        assert np.allclose(patients.image[n, 0].numpy(), expected, atol=1e-6)
        values, missing = osteoporosis_case(label, seed).variables.as_vector(standardise=True)
        assert np.array_equal(patients.clinical[n].numpy(), values)
        assert np.array_equal(patients.missing[n].numpy(), missing.astype(np.float32))
    values, missing = clinical_inputs("osteoporosis", 1)
    assert values.dtype == missing.dtype == np.float32


def test_some_phantom_patients_miss_a_variable() -> None:
    gone = np.stack([clinical_inputs("osteoporosis", seed)[1] for seed in range(40)])
    assert gone.sum() > 0 and set(np.unique(gone)) <= {0.0, 1.0}


def test_fit_evaluate_and_importance(patients: OsteoporosisSet, network: OsteoporosisNet) -> None:
    model = network
    before = next(model.backbones["vgg19"].parameters()).detach().clone()
    seen: list[Progress] = []
    record = fit_osteoporosis(model, patients, patients, TINY, seen.append)
    assert not torch.equal(before, next(model.backbones["vgg19"].parameters()))  # trained
    assert [(p.epoch, p.epochs) for p in seen] == [(1, 2)] + [(2, 2)] * 12
    assert record["backbone_steps"] == 1 and record["head_steps"] == 12
    # The frozen backbones' BatchNorm statistics come from the training images, not the
    # initialisation's (0, 1), which let activations outgrow fp16 (~1e7 in InceptionV3).
    assert record["batch_norm_items"] == len(patients)
    norms = [m for m in model.backbones.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not torch.all(m.running_var == 1.0) for m in norms)
    assert len(record["selected_components"]) == TINY.clusters
    # The packaged graph (image, clinical, missing -> logits) is what was evaluated.
    result = evaluate_osteoporosis(SPEC, model, patients, repeats=2)
    with torch.inference_mode():
        logits = model(patients.image, patients.clinical, patients.missing)
    p = torch.softmax(logits, dim=1)[:, 1].numpy()
    assert result.accuracy == pytest.approx(float(((p >= 0.5) == patients.labels.numpy()).mean()))
    evaluation = evaluation_record(result)
    assert set(evaluation) >= {"accuracy", "roc_auc", "recall", "confusion", "importance"}
    names = [i["name"] for i in evaluation["importance"]]
    assert sorted(names) == ["age", "bmi", "height", "image", "sex", "weight"]
    means = [i["mean"] for i in evaluation["importance"]]
    assert means == sorted(means, reverse=True)


def test_importance_groups_pair_each_value_with_its_missing_flag() -> None:
    groups = importance_groups(3)
    assert groups["image"] == [0, 1, 2]
    assert groups["age"] == [3, 10]
    assert groups["sex"] == [4, 5, 6, 11, 12, 13]
    assert groups["bmi"] == [9, 16]


def test_backbones_stay_as_they_are_without_steps(
    patients: OsteoporosisSet, network: OsteoporosisNet
) -> None:
    before = {k: v.clone() for k, v in network.backbones.state_dict().items()}
    assert train_backbones(network, patients, replace(TINY, backbone_steps=0)) == 0.0
    after = network.backbones.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_options_and_data_raise(patients: OsteoporosisSet, network: OsteoporosisNet) -> None:
    model = network
    for changes, message in (
        ({"clusters": 0}, "clusters: expected at least 1, got 0"),
        ({"backbone_steps": -1}, "backbone_steps: expected >= 0, got -1"),
        ({"batch_norm_items": -1}, "batch_norm_items: expected >= 0, got -1"),
        ({"head_batch_size": 1}, "head_batch_size: expected at least 2, got 1"),
        ({"learning_rate": 0.0}, r"learning rates: expected numbers > 0, got 0\.0"),
        (
            {"backbone_learning_rate": math.nan},
            r"learning rates: expected numbers > 0, got .* and nan",
        ),
        ({"clusters": 5}, "the network's head takes 4 components, the options select 5"),
    ):
        with pytest.raises(TrainingError, match=message):
            fit_osteoporosis(model, patients, patients, replace(TINY, **changes))
    one_class = patients.subset(torch.tensor([0, 2, 4]))
    with pytest.raises(TrainingError, match="training set has no item of class 1"):
        fit_osteoporosis(model, one_class, patients, TINY)
    with pytest.raises(DataError, match="per_class: expected at least 1, got 0"):
        osteoporosis_set(SPEC, 0, 80, 0)
