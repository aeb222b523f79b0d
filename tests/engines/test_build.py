"""The demo build on a tiny profile (the real profile is exercised by `make demo`)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hip_sets import indices, numbered

from engines import build, demo_profiles
from engines.build import (
    BuildError,
    WarmStart,
    build_demo,
    cached_demo,
    train_and_package,
    train_on_data,
)
from engines.catalog import engine_spec
from engines.demo_profiles import DEMO_VERSION, Profile, training_budget
from engines.manifest import Preprocessing, read_manifest
from engines.models import create
from engines.package import package_engine
from engines.training.data import HipSet, phantom_set
from engines.training.evaluate import Evaluation
from engines.training.loop import TrainOptions

TINY = Profile(
    size=64,
    train_per_class=2,
    validation_per_class=1,
    test_per_class=1,
    options=TrainOptions(epochs=1, batch_size=8),
)


@pytest.fixture
def tiny_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(demo_profiles.DEMO_PROFILES, "hip_screen", TINY)


@pytest.mark.usefixtures("tiny_profile")
def test_build_trains_packages_and_then_reuses_the_cache(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []
    first = build_demo(tmp_path, ("hip_screen",), progress=lambda n, p: seen.append((n, p.step)))
    assert not first[0].reused and seen and seen[0][0] == "hip_screen"
    manifest = read_manifest(tmp_path / "hip_screen")
    assert manifest.version == DEMO_VERSION
    assert manifest.training["data"] == "phantoms"
    assert manifest.training["profile"]["size"] == 64
    assert len(manifest.training["history"]) == 1
    assert manifest.evaluation["items"] == 8 and manifest.evaluation["positives"] == 7
    assert 0.0 <= manifest.evaluation["accuracy"] <= 1.0
    assert not (tmp_path / "hip_screen" / "checkpoints").exists()  # scratch, removed
    second = build_demo(tmp_path, ("hip_screen",))
    assert second[0].reused and second[0].manifest == manifest


@pytest.mark.usefixtures("tiny_profile")
def test_a_changed_profile_or_damaged_artefact_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    build_demo(tmp_path, ("hip_screen",))
    assert cached_demo(tmp_path, "hip_screen") is not None
    onnx = tmp_path / "hip_screen" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10])
    assert cached_demo(tmp_path, "hip_screen") is None
    assert "cached engine not reusable" in caplog.text
    build_demo(tmp_path, ("hip_screen",))
    # A catalogue change (here a threshold) is baked into the manifest: the cache is stale.
    spec = engine_spec("hip_screen")
    changed = replace(spec, findings=(replace(spec.findings[0], threshold=0.9), *spec.findings[1:]))
    caplog.set_level(logging.INFO, logger="engines.build")
    with monkeypatch.context() as patch:
        patch.setattr(build, "engine_spec", lambda name: changed)
        assert cached_demo(tmp_path, "hip_screen") is None
        assert "classes differ from the catalogue's" in caplog.text
    assert cached_demo(tmp_path, "hip_screen") is not None
    monkeypatch.setitem(
        demo_profiles.DEMO_PROFILES, "hip_screen", Profile(**{**TINY.__dict__, "size": 96})
    )
    assert cached_demo(tmp_path, "hip_screen") is None
    assert cached_demo(tmp_path / "nothing", "hip_screen") is None


def test_a_sites_own_engine_is_not_replaced_by_a_demo_build(tmp_path: Path) -> None:
    package_engine(
        engine_spec("hip_screen"), create("hip_screen"), 64, tmp_path / "hip_screen", "1.0.0-site"
    )
    with pytest.raises(BuildError, match=r"holds hip_screen 1\.0\.0-site, not a demo engine"):
        build_demo(tmp_path, ("hip_screen",))


TINY_HIPNET = replace(TINY, lateral_missing=0.2, warm_start="hip_screen")


@pytest.mark.usefixtures("tiny_profile")
def test_hipnet_builds_after_the_screening_engine_within_the_deadline_it_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    options = TrainOptions(epochs=1, batch_size=8, max_seconds=100.0)
    monkeypatch.setitem(
        demo_profiles.DEMO_PROFILES, "hipnet", replace(TINY_HIPNET, options=options)
    )
    monkeypatch.setattr(build, "IMAGE_ENGINES_SECONDS", 30.0)
    monkeypatch.setattr(demo_profiles, "MIN_TRAINING_SECONDS", 0.5)
    caplog.set_level("INFO", logger="engines.build")
    results = build_demo(tmp_path, ("hipnet", "hip_screen"))
    assert [r.manifest.name for r in results] == ["hip_screen", "hipnet"]
    screen = read_manifest(tmp_path / "hip_screen")
    first, second = (r.manifest.training for r in results)
    assert second["warm_start"] == {
        "engine": "hip_screen",
        "version": DEMO_VERSION,
        "checkpoint_sha256": screen.artefacts["checkpoint"].sha256,
        "branches": ["members.0.ap", "members.0.lateral", "members.1.ap", "members.1.lateral"],
    }
    # The engines share the deadline: the first may use all of it (its profile sets no
    # budget), the second what the first left.
    assert first["max_seconds"] == 30.0
    assert 0.5 <= second["max_seconds"] < 30.0
    assert second["profile"]["options"]["max_seconds"] == 100.0
    assert "s of training left within the build's deadline" in caplog.text
    # The recorded profile is the static one, so the engines are reused as they are.
    assert cached_demo(tmp_path, "hipnet") is not None


def test_a_training_budget_keeps_the_reserve_and_a_floor() -> None:
    profile = replace(TINY, options=TrainOptions(max_seconds=185.0), reserve_seconds=75.0)
    assert training_budget(profile, 470.0) == 185.0
    assert training_budget(profile, 230.0) == 155.0
    assert training_budget(profile, 100.0) == demo_profiles.MIN_TRAINING_SECONDS
    assert training_budget(replace(TINY, reserve_seconds=10.0), 200.0) == 190.0  # no budget


def test_hipnet_without_its_screening_engine_says_what_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(demo_profiles.DEMO_PROFILES, "hipnet", TINY_HIPNET)
    with pytest.raises(
        BuildError,
        match=r"hipnet starts from the hip_screen engine's backbone, which is not built in .*"
        r"build it first: dicom-node engines build --demo --engine hip_screen",
    ):
        build_demo(tmp_path, ("hipnet",))
    assert not (tmp_path / "hipnet" / "manifest.yaml").exists()


def test_a_warm_start_that_fits_no_branch_is_refused(tmp_path: Path) -> None:
    spec = engine_spec("hipnet")
    data = phantom_set(spec, 1, 64, seed=0)
    source = WarmStart("hip_screen", "0.0.1-test", "0" * 64, {})
    with pytest.raises(BuildError, match=r"the hip_screen backbone fits no branch of hipnet"):
        train_and_package(
            spec,
            data,
            data,
            data,
            64,
            tmp_path,
            "0.0.1-test",
            TINY.options,
            {},
            None,
            source=source,
        )


def test_train_on_data_picks_the_epoch_on_validation_and_reports_the_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_train_and_package(spec: Any, train_set: HipSet, validation: HipSet, test: HipSet,
                               *args: Any, **kwargs: Any) -> None:  # fmt: skip
        seen.update(parts=[indices(p) for p in (train_set, validation, test)], **kwargs)
        seen["training"] = args[4]

    monkeypatch.setattr(build, "train_and_package", fake_train_and_package)
    labels = [0, 1, 2] * 10
    patients = [f"pelvis{i // 2}" for i in range(30)]
    train_on_data(engine_spec("hip_screen"), numbered(labels), 64, tmp_path, "1.0.0",
                  TINY.options, source="site/labels.csv", patients=patients)  # fmt: skip
    train, validation, test = seen["parts"]
    assert validation and test and not validation & test and not train & (validation | test)
    assert seen["test_data"] == (
        "held-out test split of labels.csv (used neither to train nor to pick the epoch)"
    )
    record = seen["training"]
    assert record["patients"] == 15 and record["items"] == 30
    assert record["split"] == {
        "train": len(train),
        "validation": len(validation),
        "test": len(test),
    }


def test_train_on_data_seeds_the_initial_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class StopError(Exception):
        """Stops train_on_data once the model is made (the test needs no training)."""

    initial: list[dict[str, torch.Tensor]] = []

    def fake_train(spec: Any, model: torch.nn.Module, *args: Any) -> None:
        initial.append({k: v.clone() for k, v in model.state_dict().items()})
        raise StopError

    monkeypatch.setattr(build, "train", fake_train)
    data = numbered([0, 1] * 5)
    for seed in (7, 7, 8):
        torch.manual_seed(len(initial))  # whatever ran before must not matter
        options = replace(TINY.options, seed=seed)
        with pytest.raises(StopError):
            train_on_data(engine_spec("hip_screen"), data, 64, tmp_path, "1.0.0", options)
    first, second, other = initial
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_the_manifest_records_hipnets_accuracy_on_an_ap_alone() -> None:
    result = Evaluation(
        items=60, accuracy=0.9, recall={}, confusion=[], pointing_game=None, positives=0,
        accuracy_without_lateral=0.61234,
    )  # fmt: skip
    record = build._evaluation(result, "held-out phantoms")
    assert record["accuracy_without_lateral"] == 0.6123
    single = replace(result, accuracy_without_lateral=None)  # a single-view engine
    assert "accuracy_without_lateral" not in build._evaluation(single, "held-out phantoms")


@pytest.mark.parametrize("name", ["hip_screen", "hipnet"])
def test_fp16_is_checked_on_held_out_items_as_serving_feeds_them(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drift was measured on zeros and noise only: a site-trained Hip-Net was refused on noise.
    seen: dict[str, Any] = {}
    monkeypatch.setattr(build, "train", lambda *args: [])
    monkeypatch.setattr(
        build, "evaluate", lambda *args, **kwargs: Evaluation(
            items=1, accuracy=1.0, recall={}, confusion=[], pointing_game=None, positives=0
        ),
    )  # fmt: skip
    monkeypatch.setattr(build, "package_engine", lambda *args, **kwargs: seen.update(kwargs))
    spec = engine_spec(name)
    test = phantom_set(spec, 2, 64, 5, lateral_missing=0.5 if name == "hipnet" else 0.0)
    train_and_package(
        spec, test, test, test, 64, tmp_path, "1.0.0", TINY.options, {}, None
    )  # fmt: skip
    samples = seen["samples"]
    shown = min(len(test), build.FP16_SAMPLE_ITEMS)
    assert samples[0].shape == (shown, 1, 64, 64)
    torch.testing.assert_close(samples[0], (test.ap[:shown] - 0.5) / 0.25)  # normalised
    if name == "hipnet":
        assert test.lateral_present is not None
        assert len(samples) == 3 and torch.equal(samples[2], test.lateral_present[:shown])
    else:
        assert len(samples) == 1


def test_phantom_samples_stand_in_for_a_checkpoints_missing_test_set() -> None:
    pre = Preprocessing(size=64, mean=0.4, std=0.2)
    (ap,) = build.phantom_samples(engine_spec("hip_screen"), pre) or ()
    assert ap.shape == (8, 1, 64, 64) and float(ap.std()) > 0.0
    hipnet = build.phantom_samples(engine_spec("hipnet"), pre)
    assert hipnet is not None and [t.shape[0] for t in hipnet] == [5, 5, 5]
    assert build.phantom_samples(engine_spec("osteoporosis"), pre) is None  # not images alone
