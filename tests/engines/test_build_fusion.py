"""The demo build of the multimodal and the osteoporosis engine on tiny profiles."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from dicom_node import engines_cli
from dicom_node.clinical import VECTOR_FIELDS
from dicom_node.config_results import RoutingConfig
from engines import demo_profiles
from engines.build import (
    BuildError,
    build_demo,
    cached_demo,
    image_profile,
    train_multimodal_on_phantoms,
    train_osteoporosis_on_phantoms,
)
from engines.catalog import engine_spec
from engines.demo_profiles import DEMO_VERSION, MultimodalProfile, OsteoporosisProfile
from engines.manifest import read_manifest, verify_artefacts
from engines.models.hip_multimodal import MULTIMODAL_CLASSES
from engines.models.osteoporosis import OSTEOPOROSIS_CLASSES
from engines.osteoporosis.reduction import FeatureReduction
from engines.training.multimodal import MultimodalOptions
from engines.training.osteoporosis import OsteoporosisOptions

NAMES = ("hip_multimodal", "osteoporosis")
MULTIMODAL_TINY = MultimodalProfile(
    size=64,
    volume=(16, 32, 32),
    train_per_class=1,
    validation_per_class=1,
    test_per_class=1,
    options=MultimodalOptions(fusion_steps=2, fusion_batch_size=4, calibration_items=4, epochs=0),
)
OSTEOPOROSIS_TINY = OsteoporosisProfile(
    size=80,
    train_per_class=3,
    validation_per_class=1,
    test_per_class=2,
    options=OsteoporosisOptions(
        components_per_backbone=2, clusters=3, head_steps=3, head_batch_size=4, importance_repeats=2
    ),
)


@pytest.fixture
def tiny_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(demo_profiles.DEMO_PROFILES, "hip_multimodal", MULTIMODAL_TINY)
    monkeypatch.setitem(demo_profiles.DEMO_PROFILES, "osteoporosis", OSTEOPOROSIS_TINY)


@pytest.mark.usefixtures("tiny_profiles")
def test_build_packages_both_engines_and_then_reuses_the_cache(tmp_path: Path) -> None:
    seen: set[str] = set()
    first = build_demo(tmp_path, NAMES, progress=lambda name, p: seen.add(name))
    assert [r.reused for r in first] == [False, False] and seen == set(NAMES)

    multimodal = read_manifest(tmp_path / "hip_multimodal")
    assert multimodal.version == DEMO_VERSION
    assert multimodal.class_names == MULTIMODAL_CLASSES
    assert multimodal.preprocessing.volume == (16, 32, 32)
    assert {"text_encoder", "text_tokenizer", "head", "onnx_fp32"} <= set(multimodal.artefacts)
    verify_artefacts(multimodal, tmp_path / "hip_multimodal")
    assert multimodal.training["profile"]["volume"] == [16, 32, 32]
    assert [h["epoch"] for h in multimodal.training["history"]] == [0]
    evaluation = multimodal.evaluation
    assert evaluation["items"] == 4 and 0.0 <= evaluation["accuracy"] <= 1.0
    assert {"accuracy_without_ct", "accuracy_without_text", "attention"} <= set(evaluation)
    assert "without CT" in engines_cli._figures(evaluation)

    osteoporosis = read_manifest(tmp_path / "osteoporosis")
    assert osteoporosis.class_names == OSTEOPOROSIS_CLASSES
    assert osteoporosis.preprocessing.clinical == VECTOR_FIELDS
    assert osteoporosis.model_kwargs == {"clinical_width": 7, "components": 3}
    assert {"reduction", "importance_plot", "onnx_fp32"} <= set(osteoporosis.artefacts)
    verify_artefacts(osteoporosis, tmp_path / "osteoporosis")
    reduction = FeatureReduction.load(
        osteoporosis.artefact_path(tmp_path / "osteoporosis", "reduction")
    )
    assert reduction.backbones == ("inception_v3", "resnet50", "vgg19") and reduction.width == 3
    plot = osteoporosis.artefact_path(tmp_path / "osteoporosis", "importance_plot")
    assert plot.name == "importance.png" and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = osteoporosis.evaluation
    assert evaluation["items"] == 4 and {"roc_auc", "recall", "confusion"} <= set(evaluation)
    assert sorted(i["name"] for i in evaluation["importance"]) == [
        "age", "bmi", "height", "image", "sex", "weight"
    ]  # fmt: skip
    assert "ROC AUC" in engines_cli._figures(evaluation)

    second = build_demo(tmp_path, NAMES)
    assert [r.reused for r in second] == [True, True]
    assert [r.manifest for r in second] == [multimodal, osteoporosis]
    assert cached_demo(tmp_path, "osteoporosis") == osteoporosis
    # Phantom patients are F or M: serving reads sex O as missing for this engine.
    assert osteoporosis.preprocessing.clinical_unseen is not None
    assert "sex_other" in osteoporosis.preprocessing.clinical_unseen
    # Packaged before the manifest recorded it (and the head's spread of ~0 was fixed).
    path = tmp_path / "osteoporosis" / "manifest.yaml"
    raw = yaml.safe_load(path.read_text())
    del raw["preprocessing"]["clinical_unseen"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert cached_demo(tmp_path, "osteoporosis") is None
    # Nor the range of the numbers its training saw (a weight in pounds read as real).
    limits = osteoporosis.preprocessing.clinical_limits
    assert limits is not None and set(limits) == {"age", "height", "weight", "bmi"}
    low, high = limits["age"]
    assert low < 40 and 90 < high < 140  # around the phantoms' ages (25-98): mean +- 4 SD
    raw["preprocessing"]["clinical_unseen"] = list(osteoporosis.preprocessing.clinical_unseen)
    del raw["preprocessing"]["clinical_limits"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert cached_demo(tmp_path, "osteoporosis") is None


def test_the_phantom_only_engines_refuse_labelled_folder_training(tmp_path: Path) -> None:
    for name, needs in (("hip_multimodal", "ct, text"), ("osteoporosis", "clinical")):
        with pytest.raises(BuildError, match=rf"engine '{name}' trains on phantoms only"):
            image_profile(engine_spec(name))
        args = argparse.Namespace(name=name)
        with pytest.raises(BuildError, match=rf"it needs {needs} besides the radiograph"):
            engines_cli._train(tmp_path, args, RoutingConfig())
    assert image_profile(engine_spec("hipnet")) is demo_profiles.DEMO_PROFILES["hipnet"]


def test_a_multimodal_spec_naming_another_network_is_refused_before_training(
    tmp_path: Path,
) -> None:
    # The phantom studies are made first (one per class, tiny), then the model is checked.
    spec = dataclasses.replace(engine_spec("hip_multimodal"), model="hip_screen")
    profile = dataclasses.replace(MULTIMODAL_TINY, volume=(8, 16, 16))
    folder = tmp_path / "hip_multimodal"
    with pytest.raises(
        BuildError,
        match=r"^engine 'hip_multimodal': model 'hip_screen' is not the multimodal network$",
    ):
        train_multimodal_on_phantoms(spec, profile, folder, DEMO_VERSION)
    assert not folder.exists()


def test_an_osteoporosis_spec_naming_another_network_is_refused(tmp_path: Path) -> None:
    # The trainer passes clinical_width and components, which any other network refuses:
    # a BuildError naming the engine, not a bare TypeError.
    spec = dataclasses.replace(engine_spec("osteoporosis"), model="hip_screen")
    folder = tmp_path / "osteoporosis"
    with pytest.raises(
        BuildError,
        match=r"^engine 'osteoporosis': model 'hip_screen' is not the osteoporosis network "
        r"\(TypeError: .*unexpected keyword argument '…'\)$",
    ):
        train_osteoporosis_on_phantoms(spec, OSTEOPOROSIS_TINY, folder, DEMO_VERSION)
    assert not folder.exists()
