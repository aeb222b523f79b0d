"""Multimodal training on a handful of tiny phantom studies (the real profile: `make demo`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from engines.catalog import engine_spec
from engines.ct_grid import engine_volume
from engines.models import create
from engines.models.hip_multimodal import HipMultimodal
from engines.phantoms import screen_hip
from engines.phantoms.clinical import multimodal_case
from engines.phantoms.ct import ct_hip, phantom_image
from engines.training.data import DataError
from engines.training.loop import Progress, TrainingError
from engines.training.multimodal import (
    CT,
    RADIOGRAPH,
    TEXT,
    MultimodalOptions,
    MultimodalSet,
    evaluate_multimodal,
    evaluation_record,
    multimodal_set,
    train_multimodal,
    zero_init_residual,
)

SPEC = engine_spec("hip_multimodal")
GRID = (16, 32, 32)
SEED = 4  # seeds 4..11: the cases of seeds 4, 6 and 11 have no clinical text


class FakeEncoder:
    """A deterministic stand-in for the MiniLM encoder (the build test uses the real one)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        out = np.stack([np.full(384, (len(t) % 7) + 1.0, np.float32) for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def network() -> HipMultimodal:
    """One network for the module: creating two ResNet-50s takes seconds."""
    torch.manual_seed(0)
    model = create("hip_multimodal")
    assert isinstance(model, HipMultimodal)
    zero_init_residual(model)
    return model


@pytest.fixture(scope="module")
def studies() -> MultimodalSet:
    return multimodal_set(SPEC, 2, 64, GRID, SEED, FakeEncoder())


def test_the_set_holds_what_serving_feeds(studies: MultimodalSet) -> None:
    assert studies.radiograph.shape == (8, 1, 64, 64)
    assert studies.ct.shape == (8, 1, *GRID) and studies.text.shape == (8, 384)
    assert studies.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    for n in range(8):
        label, seed = SPEC.class_names[n % 4], SEED + n
        # FAI has no radiograph phantom: its radiograph is the normal one of the seed.
        shown = "normal" if label == "femoroacetabular_impingement" else label
        expected = (screen_hip(shown, seed, 64).image - 0.5) / 0.25
        assert np.allclose(studies.radiograph[n, 0].numpy(), expected, atol=1e-6)
        volume = engine_volume(phantom_image(ct_hip(label, seed)), grid=GRID)
        assert np.array_equal(studies.ct[n, 0].numpy(), volume)
        has_text = bool(multimodal_case(label, seed).text)
        assert studies.present[n].tolist() == [1.0, 1.0, float(has_text)]
        assert bool(studies.text[n].abs().sum() > 0) == has_text
    assert studies.present[:, TEXT].tolist() == [0, 1, 0, 1, 1, 1, 1, 0]


def test_only_non_empty_texts_are_encoded_in_one_batch() -> None:
    encoder = FakeEncoder()
    multimodal_set(SPEC, 1, 64, GRID, SEED, encoder)
    texts = [multimodal_case(label, SEED + k).text for k, label in enumerate(SPEC.class_names)]
    assert encoder.calls == [[t for t in texts if t]]


def test_removing_a_modality_zeroes_it_and_marks_it_absent(studies: MultimodalSet) -> None:
    no_ct = studies.without(CT)
    assert not no_ct.ct.any() and not no_ct.present[:, CT].any()
    assert torch.equal(no_ct.text, studies.text) and torch.equal(
        no_ct.radiograph, studies.radiograph
    )
    no_text = studies.without(TEXT)
    assert not no_text.text.any() and not no_text.present[:, TEXT].any()
    assert torch.equal(no_text.ct, studies.ct)
    with pytest.raises(DataError, match="the radiograph is always present"):
        studies.without(RADIOGRAPH)


def test_training_evaluates_and_restores_the_best_weights(
    studies: MultimodalSet, network: HipMultimodal, tmp_path: Path
) -> None:
    model = network
    seen: list[Progress] = []
    options = MultimodalOptions(
        fusion_steps=3, fusion_batch_size=4, calibration_items=4, batch_size=4, ct_missing=0.5,
        text_missing=0.5,
    )  # fmt: skip
    fusion = model.head[-1].weight.detach().clone()
    backbone = model.radiograph.stem[0].weight.detach().clone()
    history = train_multimodal(SPEC, model, studies, studies, options, tmp_path, seen.append)
    # Stage 1: the fusion on cached features (3 steps); stage 2: one end-to-end epoch.
    assert [(p.epoch, p.epochs, p.step, p.steps) for p in seen] == [
        (1, 2, 1, 3), (1, 2, 2, 3), (1, 2, 3, 3), (2, 2, 1, 2), (2, 2, 2, 2)
    ]  # fmt: skip
    assert [h.epoch for h in history] == [0, 1] and history[0].train_loss > 0
    assert sorted(f.name for f in tmp_path.iterdir()) == ["best.pt", "epoch-000.pt", "epoch-001.pt"]
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(fusion, model.head[-1].weight)
    if history[1].val_accuracy > history[0].val_accuracy:  # stage 2 kept: backbones trained
        assert not torch.equal(backbone, model.radiograph.stem[0].weight)
    assert not model.ct.get_submodule("stages")._forward_hooks  # the hook is removed
    record = evaluation_record(evaluate_multimodal(SPEC, model, studies))
    assert record["items"] == 8 and 0.0 <= record["accuracy"] <= 1.0
    assert set(record) >= {"recall", "confusion", "accuracy_without_ct", "accuracy_without_text"}
    assert list(record["recall"]) == list(SPEC.class_names)
    assert sum(map(sum, record["confusion"])) == 8
    assert list(record["attention"]) == ["radiograph", "ct", "text"]
    assert sum(record["attention"].values()) == pytest.approx(1.0, abs=1e-3)


def test_time_budget_stops_after_the_first_step(
    studies: MultimodalSet, network: HipMultimodal, tmp_path: Path
) -> None:
    model = network
    seen: list[Progress] = []
    options = MultimodalOptions(
        fusion_steps=1, calibration_items=4, epochs=3, batch_size=4, max_seconds=0.0
    )
    history = train_multimodal(SPEC, model, studies, studies, options, tmp_path, seen.append)
    assert [h.epoch for h in history] == [0, 1] and len(seen) == 2
    assert not model.training  # restored best weights, left for evaluation


def test_bad_options_and_data_raise(
    studies: MultimodalSet, network: HipMultimodal, tmp_path: Path
) -> None:
    model = network
    base = MultimodalOptions()
    for changes, message in (
        ({"epochs": -1}, "epochs: expected at least 0, got -1"),
        ({"fusion_steps": 0}, "fusion_steps: expected at least 1, got 0"),
        ({"batch_size": 1}, "batch_size: expected at least 2, got 1"),
        ({"learning_rate": 0.0}, r"learning_rate: expected a number > 0, got 0\.0"),
        ({"learning_rate": math.inf}, r"learning_rate: expected a number > 0, got inf"),
        ({"ct_missing": 1.0}, r"ct_missing: expected a share in \[0, 1\), got 1\.0"),
        ({"text_missing": -0.1}, r"text_missing: expected a share in \[0, 1\), got -0\.1"),
    ):
        with pytest.raises(TrainingError, match=message):
            train_multimodal(SPEC, model, studies, studies, replace(base, **changes), tmp_path)
    normal_only = studies.subset(torch.tensor([0, 4]))
    with pytest.raises(TrainingError, match=r"no item of class\(es\) \['osteoarthritis'"):
        train_multimodal(SPEC, model, normal_only, studies, base, tmp_path)
    with pytest.raises(DataError, match="per_class: expected at least 1, got 0"):
        multimodal_set(SPEC, 0, 64, GRID, 0, FakeEncoder())
