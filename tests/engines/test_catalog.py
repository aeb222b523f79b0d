from __future__ import annotations

import pytest

from engines.catalog import ENGINES, UnknownEngineError, engine_spec
from engines.models.hip_multimodal import MULTIMODAL_CLASSES
from engines.models.hip_screen import SCREEN_CLASSES
from engines.models.hipnet import FAILURE_CLASSES
from engines.models.osteoporosis import OSTEOPOROSIS_CLASSES


def test_catalog_classes_follow_the_networks_outputs() -> None:
    assert engine_spec("hip_screen").class_names == SCREEN_CLASSES
    assert engine_spec("hipnet").class_names == FAILURE_CLASSES
    assert engine_spec("hipnet").views == ("AP", "LATERAL")
    assert engine_spec("hip_multimodal").class_names == MULTIMODAL_CLASSES
    assert engine_spec("hip_multimodal").modalities == ("ct", "text")
    assert engine_spec("osteoporosis").class_names == OSTEOPOROSIS_CLASSES
    assert engine_spec("osteoporosis").modalities == ("clinical",)


def test_each_engine_has_exactly_one_normal_class() -> None:
    for spec in ENGINES.values():
        if spec.name == "hipnet":  # every Hip-Net class is a failure cause
            continue
        normal = [f.name for f in spec.findings if f.normal or f.code == "17621005"]
        assert len(normal) == 1, spec.name
    assert engine_spec("osteoporosis").finding("no_osteoporosis").normal
    assert engine_spec("osteoporosis").finding("osteoporosis").code == "64859006"


def test_codes_are_snomed_ids_with_their_terms_or_explicitly_missing() -> None:
    for spec in ENGINES.values():
        for finding in spec.findings:
            assert finding.source in {"dicom", "snomed-valueset", "broader", "none"}
            assert 0.0 < finding.threshold < 1.0
            if finding.source == "none":
                assert finding.code is None and finding.meaning is None
            else:
                assert finding.code is not None and finding.code.isdigit()
                assert finding.meaning
    for spec in ENGINES.values():
        codes = [f.code for f in spec.findings if f.code]
        assert len(codes) == len(set(codes)), f"two classes of {spec.name} share a concept"


def test_urgent_findings_are_fractures_dislocation_and_infection() -> None:
    urgent = {f.name for s in ENGINES.values() for f in s.findings if f.high_risk}
    assert urgent == {
        "femoral_neck_fracture",
        "intertrochanteric_fracture",
        "periprosthetic_joint_infection",
        "dislocation",
        "periprosthetic_fracture",
    }


def test_unknown_engine_and_class() -> None:
    with pytest.raises(
        UnknownEngineError,
        match="unknown engine 'knee'; available: hip_multimodal, hip_screen, hipnet, osteoporosis",
    ):
        engine_spec("knee")
    with pytest.raises(UnknownEngineError, match="engine 'hipnet' has no class 'normal'"):
        engine_spec("hipnet").finding("normal")
    assert engine_spec("hip_screen").finding("normal").code == "17621005"
