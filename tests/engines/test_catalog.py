from __future__ import annotations

import pytest

from engines.catalog import ENGINES, UnknownEngineError, engine_spec
from engines.models.hip_screen import SCREEN_CLASSES
from engines.models.hipnet import FAILURE_CLASSES


def test_catalog_classes_follow_the_networks_outputs() -> None:
    assert engine_spec("hip_screen").class_names == SCREEN_CLASSES
    assert engine_spec("hipnet").class_names == FAILURE_CLASSES
    assert engine_spec("hipnet").views == ("AP", "LATERAL")


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
    codes = [f.code for s in ENGINES.values() for f in s.findings if f.code]
    assert len(codes) == len(set(codes)), "two classes share a concept"


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
        UnknownEngineError, match="unknown engine 'knee'; available: hip_screen, hipnet"
    ):
        engine_spec("knee")
    with pytest.raises(UnknownEngineError, match="engine 'hipnet' has no class 'normal'"):
        engine_spec("hipnet").finding("normal")
    assert engine_spec("hip_screen").finding("normal").code == "17621005"
