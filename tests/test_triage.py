from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from manifests import manifest_for

from dicom_node.config import parse_config
from dicom_node.config_results import TriageConfig
from dicom_node.errors import ConfigError
from dicom_node.models import HipFinding, HipTask, Prediction, SourceImage, TriageDecision
from dicom_node.triage import (
    PRIORITIES,
    TriageError,
    check_cascade,
    check_overrides,
    decide,
    measured_probability,
    probability_text,
    shown_probability,
    shown_threshold,
    study_priority,
)
from engines.catalog import engine_spec
from engines.manifest import Manifest

DEFAULTS = TriageConfig()
AP = SourceImage(
    "1.2.3.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.100", Path("a.dcm"), "AP", "B", {}
)


SCREEN = manifest_for("hip_screen", "0.0.0-test")
HIPNET = manifest_for("hipnet", "0.0.0-test")


def predict(manifest: Manifest, **probabilities: float) -> Prediction:
    """A prediction with the named classes at these probabilities, every other class at 0.01."""
    assert set(probabilities) <= set(manifest.class_names)
    values = tuple(probabilities.get(name, 0.01) for name in manifest.class_names)
    task = HipTask(manifest.name, "R", AP)
    return Prediction(task, manifest.version, manifest.class_names, values, {})


def triage(
    manifest: Manifest, cfg: TriageConfig = DEFAULTS, **probabilities: float
) -> TriageDecision:
    return decide(predict(manifest, **probabilities), manifest, cfg)


def positives(decision: TriageDecision) -> list[str]:
    return [f.name for f in decision.positives]


def test_catalogue_assumptions() -> None:
    fracture = engine_spec("hip_screen").finding("femoral_neck_fracture")
    assert (fracture.threshold, fracture.high_risk) == (0.4, True)
    arthritis = engine_spec("hip_screen").finding("osteoarthritis")
    assert (arthritis.threshold, arthritis.high_risk) == (0.5, False)
    assert SCREEN.class_names[0] == "normal"
    assert "normal" not in HIPNET.class_names


def test_high_risk_class_above_its_threshold_is_urgent() -> None:
    decision = triage(SCREEN, normal=0.2, femoral_neck_fracture=0.7)
    assert decision.priority == "URGENT"
    assert positives(decision) == ["femoral_neck_fracture"]
    (finding,) = decision.positives
    assert (finding.probability, finding.threshold, finding.urgent) == (0.7, 0.4, True)
    assert decision.top is finding
    assert len(decision.findings) == len(SCREEN.classes)
    assert decision.prediction.task.engine == "hip_screen"


def test_other_positive_is_flagged() -> None:
    decision = triage(SCREEN, osteoarthritis=0.8, total_hip_arthroplasty=0.6)
    assert decision.priority == "FLAG"
    assert positives(decision) == ["osteoarthritis", "total_hip_arthroplasty"]
    assert not any(f.urgent for f in decision.positives)


def test_urgent_wins_over_flag() -> None:
    decision = triage(SCREEN, osteoarthritis=0.8, intertrochanteric_fracture=0.45)
    assert decision.priority == "URGENT"
    assert positives(decision) == ["osteoarthritis", "intertrochanteric_fracture"]


def test_only_the_normal_class_present_is_no_finding() -> None:
    decision = triage(SCREEN, normal=0.95)
    assert decision.priority == "NONE"
    assert decision.positives == ()
    normal = decision.findings[0]
    assert (normal.name, normal.present, normal.normal, normal.urgent) == (
        "normal",
        True,
        True,
        False,
    )
    assert decision.top is normal
    assert [f.name for f in decision.findings if f.normal] == ["normal"]


def test_nothing_present_is_none() -> None:
    assert triage(SCREEN).priority == "NONE"
    assert triage(HIPNET).priority == "NONE"
    assert not any(f.present for f in triage(HIPNET).findings)


def test_probability_equal_to_the_threshold_is_present() -> None:
    at = triage(SCREEN, femoral_neck_fracture=0.4)
    assert at.findings[3].name == "femoral_neck_fracture"
    assert at.findings[3].present and at.priority == "URGENT"
    below = triage(SCREEN, femoral_neck_fracture=0.3999)
    assert not below.findings[3].present and below.priority == "NONE"
    assert triage(SCREEN, osteoarthritis=0.5).priority == "FLAG"
    assert triage(SCREEN, osteoarthritis=0.4999).priority == "NONE"


def test_dual_view_engine_without_a_normal_class() -> None:
    assert triage(HIPNET, dislocation=0.5).priority == "URGENT"
    assert triage(HIPNET, periprosthetic_joint_infection=0.4).priority == "URGENT"
    assert triage(HIPNET, polyethylene_wear=0.9, aseptic_loosening=0.6).priority == "FLAG"


def test_threshold_overrides_replace_the_manifest() -> None:
    cfg = TriageConfig(
        thresholds={"hip_screen": {"osteoarthritis": 0.9, "femoral_neck_fracture": 0.2}}
    )
    raised = triage(SCREEN, cfg, osteoarthritis=0.8)
    assert raised.priority == "NONE"
    assert raised.findings[1].threshold == 0.9 and not raised.findings[1].present
    lowered = triage(SCREEN, cfg, femoral_neck_fracture=0.25)
    assert lowered.priority == "URGENT"
    assert lowered.findings[3].threshold == 0.2
    # Classes not overridden keep the manifest's threshold.
    assert lowered.findings[6].threshold == 0.5
    # Overrides of one engine leave another alone.
    assert triage(HIPNET, cfg, polyethylene_wear=0.6).priority == "FLAG"


def test_urgent_override_replaces_the_high_risk_list() -> None:
    cfg = parse_config({"triage": {"urgent": {"hip_screen": ["osteoarthritis"]}}}).triage
    check_overrides(cfg, SCREEN)
    arthritis = triage(SCREEN, cfg, osteoarthritis=0.8)
    assert arthritis.priority == "URGENT" and arthritis.findings[1].urgent
    fracture = triage(SCREEN, cfg, femoral_neck_fracture=0.8)
    assert fracture.priority == "FLAG" and not fracture.findings[3].urgent
    nothing_urgent = TriageConfig(urgent={"hip_screen": ()})
    assert triage(SCREEN, nothing_urgent, femoral_neck_fracture=0.9).priority == "FLAG"
    # The hip_screen list does not touch hipnet's high-risk classes.
    assert triage(HIPNET, cfg, dislocation=0.9).priority == "URGENT"


def test_overrides_from_the_configuration_file() -> None:
    cfg = parse_config(
        {
            "triage": {
                "thresholds": {"hipnet": {"polyethylene_wear": 0.95}},
                "urgent": {"hipnet": ["polyethylene_wear", "aseptic_loosening"]},
            }
        }
    ).triage
    check_overrides(cfg, HIPNET)
    check_overrides(cfg, SCREEN)  # names no hip_screen class: nothing to refuse
    assert triage(HIPNET, cfg, polyethylene_wear=0.9).priority == "NONE"
    assert triage(HIPNET, cfg, polyethylene_wear=0.95).priority == "URGENT"
    assert triage(HIPNET, cfg, aseptic_loosening=0.5).priority == "URGENT"
    assert triage(HIPNET, cfg, dislocation=0.9).priority == "FLAG"


def test_study_priority_is_the_highest_of_its_hips() -> None:
    none = triage(SCREEN, normal=0.9)
    flag = triage(SCREEN, osteoarthritis=0.9)
    urgent = triage(SCREEN, femoral_neck_fracture=0.9)
    assert PRIORITIES == ("NONE", "FLAG", "URGENT")
    assert study_priority([]) == "NONE"
    assert study_priority([none]) == "NONE"
    assert study_priority([none, flag, none]) == "FLAG"
    assert study_priority([flag, urgent, none]) == "URGENT"
    assert study_priority(d for d in (urgent, flag)) == "URGENT"


def test_check_overrides_accepts_known_classes() -> None:
    cfg = TriageConfig(
        thresholds={"hip_screen": {"normal": 0.6}, "hipnet": {"not_a_class": 0.5}},
        urgent={"hip_screen": ("osteoarthritis",)},
    )
    check_overrides(cfg, SCREEN)  # only the manifest's own engine is checked
    check_overrides(DEFAULTS, SCREEN)
    check_overrides(DEFAULTS, HIPNET)


def test_check_overrides_names_an_unknown_threshold_class() -> None:
    cfg = TriageConfig(thresholds={"hip_screen": {"osteoarthritis": 0.6, "fracture": 0.5}})
    with pytest.raises(
        ConfigError,
        match=r"^triage\.thresholds\.hip_screen\.fracture: not a class of hip_screen "
        r"\(normal, osteoarthritis, .*\), got 'fracture'$",
    ):
        check_overrides(cfg, SCREEN)


def test_check_overrides_names_an_unknown_urgent_class() -> None:
    cfg = TriageConfig(urgent={"hipnet": ("dislocation", "loosening")})
    with pytest.raises(
        ConfigError,
        match=r"^triage\.urgent\.hipnet: not a class of hipnet "
        r"\(periprosthetic_joint_infection, .*polyethylene_wear\), got 'loosening'$",
    ):
        check_overrides(cfg, HIPNET)
    # The same name is a hip_screen class only if the catalogue says so.
    with pytest.raises(ConfigError, match=r"^triage\.urgent\.hip_screen: .* got 'dislocation'$"):
        check_overrides(TriageConfig(urgent={"hip_screen": ("dislocation",)}), SCREEN)


def test_a_prediction_with_other_classes_than_the_manifest_is_refused() -> None:
    manifest = manifest_for("hip_screen", "0.0.0-test")
    wrong = replace(predict(manifest), classes=tuple(reversed(manifest.class_names)))
    with pytest.raises(TriageError, match=r"hip_screen: prediction classes .* differ from"):
        decide(wrong, manifest, TriageConfig())


def finding(probability: float, threshold: float) -> HipFinding:
    return HipFinding(
        name="femoral_neck_fracture",
        probability=probability,
        threshold=threshold,
        present=probability >= threshold,
        urgent=True,
        normal=False,
    )


@pytest.mark.parametrize(
    ("probability", "threshold", "two", "four"),
    [
        (0.3996, 0.4, 0.39, 0.3996),  # was 0.40 beside "below threshold"
        (0.39996, 0.4, 0.39, 0.3999),  # was 0.4 in the SR, Presence Absent
        (0.4, 0.4, 0.4, 0.4),
        (0.40004, 0.40004, 0.41, 0.4001),  # present: never printed under its threshold
        (0.8312, 0.4, 0.83, 0.8312),  # away from the threshold: plain rounding
        (0.825, 0.4, 0.83, 0.825),  # half up, on the decimal text of the float (not 0.82)
    ],
)
def test_a_shown_probability_stays_on_its_side_of_the_threshold(
    probability: float, threshold: float, two: float, four: float
) -> None:
    assert shown_probability(finding(probability, threshold), 2) == two
    assert shown_probability(finding(probability, threshold), 4) == four


@pytest.mark.parametrize(
    ("probability", "threshold", "text"),
    [
        (0.3996, 0.4, "p=0.39"),
        (0.9996, 0.4, "p>0.99"),  # a model's output short of 1 is not printed as certainty
        (1.0, 0.4, "p>0.99"),  # a saturated output is not certainty either (was p=1.00)
        (0.0004, 0.4, "p<0.01"),
        (0.0, 0.4, "p<0.01"),
        (0.5, 0.4, "p=0.50"),
    ],
)
def test_probability_text(probability: float, threshold: float, text: str) -> None:
    assert probability_text(finding(probability, threshold)) == text


@pytest.mark.parametrize(
    ("probability", "threshold", "measured"),
    [
        (0.99996, 0.4, 0.9999),  # was 1.0 in the SR: certainty the banner avoids
        (1.0, 0.4, 0.9999),
        (0.00004, 0.4, 0.0001),  # was 0.0
        (0.0, 0.4, 0.0001),
        (0.8312, 0.4, 0.8312),
        (0.99996, 0.99995, 1.0),  # 0.9999 would read under the threshold of a present one
    ],
)
def test_a_measured_probability_is_never_certainty(
    probability: float, threshold: float, measured: float
) -> None:
    assert measured_probability(finding(probability, threshold)) == measured


@pytest.mark.parametrize(
    ("threshold", "text"),
    [(0.4, "0.400"), (0.35, "0.350"), (0.3472, "0.3472"), (0.1234567, "0.123457")],
)
def test_shown_threshold_keeps_the_digits_it_has(threshold: float, text: str) -> None:
    assert shown_threshold(threshold) == text


def test_a_cascade_finding_the_engine_does_not_have_is_refused() -> None:
    # A site's hip_screen that calls its class `tha`: the default cascade to Hip-Net never
    # started, and nothing said so (the config checks the built-in catalogue only).
    routing = parse_config({}).routing
    check_cascade(routing, SCREEN)  # the default cascade, the built-in classes
    check_cascade(routing, HIPNET)  # no rule after hipnet
    renamed = tuple(
        replace(c, name="tha") if c.name == "total_hip_arthroplasty" else c for c in SCREEN.classes
    )
    with pytest.raises(
        ConfigError,
        match=r"^routing\.cascade\[0\]\.finding: not a class of hip_screen \(normal, .*tha.*\), "
        r"got 'total_hip_arthroplasty'$",
    ):
        check_cascade(routing, replace(SCREEN, classes=renamed))
