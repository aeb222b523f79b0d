from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_node.config import parse_config
from dicom_node.config_results import ROUTING_ATTRIBUTES, RoutingConfig
from dicom_node.models import HipFinding, HipTask, Prediction, SourceImage, TriageDecision
from dicom_node.route import attributes_of, cascade_tasks, plan_tasks, rule_matches, source_image
from dicom_node.route.plan import (
    DX_FOR_PROCESSING,
    MAX_RADIOGRAPHS,
    ct_candidates,
    ct_series,
    held_back,
    unused,
    why_none,
)
from engines.catalog import engine_spec

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT = "1.2.840.10008.5.1.4.1.1.2"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
DEFAULT = RoutingConfig()


def header(uid: str, **attributes: str) -> Dataset:
    """A header-only dataset: a DX AP pelvis unless ``attributes`` say otherwise ("" drops one)."""
    ds = Dataset()
    ds.SOPInstanceUID = f"1.2.3.{uid}"
    ds.SOPClassUID = DX
    ds.SeriesInstanceUID = "1.2.3.100"
    values = {"Modality": "DX", "BodyPartExamined": "PELVIS", "ViewPosition": "AP"}
    values.update(attributes)
    for keyword, value in values.items():
        if value:
            setattr(ds, keyword, value)
    return ds


def image(uid: str, calling_ae: str = "PACS", **attributes: str) -> SourceImage:
    return source_image(header(uid, **attributes), Path(f"spool/{uid}.dcm"), calling_ae)


def summary(tasks: tuple[HipTask, ...]) -> list[tuple[str, str, str, str | None, str]]:
    """(engine, side, AP uid, lateral uid, rule) per task, in order."""
    return [
        (
            t.engine,
            t.side,
            t.ap.sop_instance_uid,
            t.lateral.sop_instance_uid if t.lateral else None,
            t.rule,
        )
        for t in tasks
    ]


def decision(task: HipTask, **present: float) -> TriageDecision:
    """A hand-made decision of ``task``'s engine: the named classes at these probabilities."""
    classes = engine_spec(task.engine).class_names
    probabilities = tuple(present.get(name, 0.05) for name in classes)
    prediction = Prediction(task, "0.0.0-test", classes, probabilities, {})
    findings = tuple(
        HipFinding(name, p, 0.5, p >= 0.5, urgent=False, normal=name == "normal")
        for name, p in zip(classes, probabilities, strict=True)
    )
    priority = "FLAG" if any(f.present and not f.normal for f in findings) else "NONE"
    return TriageDecision(prediction, findings, priority)


# --- attributes and source images ------------------------------------------------


def test_attributes_of_gives_every_routing_attribute_as_text() -> None:
    ds = header("1", ImageLaterality="L", Manufacturer=" ACME ")
    attributes = attributes_of(ds, "ORTHO_1")
    assert tuple(attributes) == ROUTING_ATTRIBUTES
    assert attributes["CallingAE"] == "ORTHO_1"
    assert attributes["Modality"] == "DX"
    assert attributes["ImageLaterality"] == "L"
    assert attributes["Manufacturer"] == "ACME"  # stripped
    assert attributes["SOPClassUID"] == DX
    for absent in ("Laterality", "StudyDescription", "SeriesDescription"):
        assert attributes[absent] == "", absent


def test_source_image_reads_view_and_laterality() -> None:
    ds = header("1")
    for keyword, value in (("ImageLaterality", "l"), ("ViewPosition", "ll")):
        # Lower case is not valid CS, but senders do it; build it past pydicom's validation.
        ds.add(DataElement(keyword, "CS", value, validation_mode=pydicom_config.IGNORE))
    img = source_image(ds, Path("spool/1.dcm"), "MODALITY")
    assert (img.sop_instance_uid, img.sop_class_uid, img.series_uid) == ("1.2.3.1", DX, "1.2.3.100")
    assert img.path == Path("spool/1.dcm")
    assert (img.view, img.laterality) == ("LL", "L")  # upper-cased
    assert img.attributes["CallingAE"] == "MODALITY"
    # Image Laterality wins; the series Laterality is the fallback.
    assert image("2", ImageLaterality="R", Laterality="L").laterality == "R"
    assert image("3", Laterality="L").laterality == "L"
    assert image("4").laterality == "" and image("4", ViewPosition="").view == ""


# --- planning with the default rules ---------------------------------------------------


def test_ap_pelvis_gives_two_hip_screen_tasks_right_then_left() -> None:
    pelvis = image("1", ImageLaterality="B")
    tasks = plan_tasks([pelvis], DEFAULT)
    assert summary(tasks) == [
        ("hip_screen", "R", "1.2.3.1", None, "hip-ap-radiographs"),
        ("hip_screen", "L", "1.2.3.1", None, "hip-ap-radiographs"),
    ]
    assert all(t.ap is pelvis for t in tasks)


def test_an_enhanced_image_gives_its_side_in_frame_laterality() -> None:
    # Required in the Frame Anatomy group of an Enhanced (or Legacy Converted) CT, where the
    # series-level Laterality is left out: read as no side, a right-hip CT fed both hips.
    def frames(*sides: str) -> list[Dataset]:
        groups = []
        for side in sides:
            anatomy, group = Dataset(), Dataset()
            anatomy.FrameLaterality = side
            group.FrameAnatomySequence = [anatomy]
            groups.append(group)
        return groups

    ds = header("5", Modality="CT")
    ds.SharedFunctionalGroupsSequence = frames("L")
    assert source_image(ds, Path("spool/5.dcm"), "PACS").laterality == "L"
    ds.Laterality = "R"  # the series' own value, where given, comes first
    assert source_image(ds, Path("spool/5.dcm"), "PACS").laterality == "R"
    del ds.Laterality
    ds.SharedFunctionalGroupsSequence = frames("")
    ds.PerFrameFunctionalGroupsSequence = frames("R", "R")
    assert source_image(ds, Path("spool/5.dcm"), "PACS").laterality == "R"
    ds.PerFrameFunctionalGroupsSequence = frames("R", "L")  # frames disagree: no one side
    assert source_image(ds, Path("spool/5.dcm"), "PACS").laterality == ""


def test_ap_without_laterality_is_taken_as_both_hips() -> None:
    tasks = plan_tasks([image("1", BodyPartExamined="")], DEFAULT)
    assert [t.side for t in tasks] == ["R", "L"]


def test_ap_of_one_hip_gives_one_task_for_that_side() -> None:
    tasks = plan_tasks([image("1", BodyPartExamined="HIP", ImageLaterality="L")], DEFAULT)
    assert summary(tasks) == [("hip_screen", "L", "1.2.3.1", None, "hip-ap-radiographs")]
    tasks = plan_tasks([image("2", Modality="CR", ViewPosition="PA", Laterality="R")], DEFAULT)
    assert [(t.engine, t.side) for t in tasks] == [("hip_screen", "R")]


def test_lateral_view_alone_gives_no_task() -> None:
    assert plan_tasks([image("1", ViewPosition="LL", ImageLaterality="L")], DEFAULT) == ()


def test_lateral_view_is_skipped_even_when_a_rule_selects_it() -> None:
    routing = parse_config(
        {"routing": {"rules": [{"name": "all", "engine": "hip_screen"}]}}
    ).routing
    assert plan_tasks([image("1", ViewPosition="LATERAL", ImageLaterality="R")], routing) == ()


def test_ct_and_sr_instances_give_no_task() -> None:
    ct = image("1", Modality="CT", SOPClassUID=CT, ViewPosition="")
    sr = image(
        "2", Modality="SR", SOPClassUID=COMPREHENSIVE_SR, ViewPosition="", BodyPartExamined=""
    )
    chest = image("3", BodyPartExamined="CHEST")
    no_view = image("4", ViewPosition="")
    assert plan_tasks([ct, sr, chest, no_view], DEFAULT) == ()


def test_tasks_follow_image_order() -> None:
    left = image("1", BodyPartExamined="HIP", ImageLaterality="L")
    pelvis = image("2")
    assert summary(plan_tasks([left, pelvis], DEFAULT)) == [
        ("hip_screen", "L", "1.2.3.1", None, "hip-ap-radiographs"),
        ("hip_screen", "R", "1.2.3.2", None, "hip-ap-radiographs"),
        ("hip_screen", "L", "1.2.3.2", None, "hip-ap-radiographs"),
    ]


# --- custom rules -------------------------------------------------------------------


def test_calling_ae_and_series_description_conditions() -> None:
    routing = parse_config(
        {
            "routing": {
                "rules": [
                    {
                        "name": "ortho",
                        "engine": "hipnet",
                        "when": {"CallingAE": "ORTHO_.*", "SeriesDescription": "(?i).*prosthe.*"},
                    }
                ]
            }
        }
    ).routing
    (rule,) = routing.rules
    selected = image("1", calling_ae="ORTHO_2", SeriesDescription="Hip prosthesis follow-up")
    assert rule_matches(rule, selected.attributes)
    other_ae = image("2", calling_ae="ER", SeriesDescription="Hip prosthesis follow-up")
    other_series = image("3", calling_ae="ORTHO_2", SeriesDescription="Pelvis trauma")
    no_series = image("4", calling_ae="ORTHO_2")
    assert not rule_matches(rule, other_ae.attributes)
    assert not rule_matches(rule, other_series.attributes)
    assert not rule_matches(rule, no_series.attributes)
    tasks = plan_tasks([other_ae, selected, other_series, no_series], routing)
    assert [(t.engine, t.side, t.ap.sop_instance_uid, t.rule) for t in tasks] == [
        ("hipnet", "R", "1.2.3.1", "ortho"),
        ("hipnet", "L", "1.2.3.1", "ortho"),
    ]


@pytest.mark.parametrize(
    "when",
    [{"Modality": ["dx", "cr"]}, {"Modality": "dx|cr"}, {"Modality": ["Dx"], "ViewPosition": "ap"}],
    ids=["list", "pattern", "mixed"],
)
def test_code_string_rule_values_match_whatever_their_case(when: dict[str, Any]) -> None:
    # A header's Code Strings are upper-cased; a rule's must match them as written by an admin.
    routing = parse_config(
        {"routing": {"rules": [{"name": "lower", "engine": "hip_screen", "when": when}]}}
    ).routing
    (rule,) = routing.rules
    assert rule_matches(rule, image("1", Modality="DX").attributes)
    assert not rule_matches(rule, image("2", Modality="CT").attributes)
    assert [t.rule for t in plan_tasks([image("1")], routing)] == ["lower", "lower"]


def test_other_attributes_still_match_exactly() -> None:
    routing = parse_config(
        {
            "routing": {
                "rules": [
                    {"name": "ortho", "engine": "hip_screen", "when": {"CallingAE": ["ortho"]}}
                ]
            }
        }
    ).routing
    (rule,) = routing.rules
    assert rule_matches(rule, image("1", calling_ae="ortho").attributes)
    assert not rule_matches(rule, image("2", calling_ae="ORTHO").attributes)


def test_rule_matches_treats_a_missing_attribute_as_empty() -> None:
    rule = DEFAULT.rules[0]
    attributes = {"Modality": "DX", "ViewPosition": "AP"}  # no BodyPartExamined: optional
    assert rule_matches(rule, attributes)
    assert not rule_matches(rule, {"Modality": "DX"})


def test_the_same_image_twice_gives_each_task_once() -> None:
    pelvis = image("1")
    assert summary(plan_tasks([pelvis, pelvis], DEFAULT)) == summary(plan_tasks([pelvis], DEFAULT))
    # Two rules selecting the same image for the same engine: the first rule keeps the task.
    routing = parse_config(
        {
            "routing": {
                "rules": [
                    {"name": "first", "engine": "hip_screen", "when": {"Modality": ["DX"]}},
                    {"name": "second", "engine": "hip_screen", "when": {"ViewPosition": "AP|PA"}},
                    {"name": "dual", "engine": "hipnet", "when": {"Modality": ["DX"]}},
                ]
            }
        }
    ).routing
    assert summary(plan_tasks([pelvis, pelvis], routing)) == [
        ("hip_screen", "R", "1.2.3.1", None, "first"),
        ("hip_screen", "L", "1.2.3.1", None, "first"),
        ("hipnet", "R", "1.2.3.1", None, "dual"),
        ("hipnet", "L", "1.2.3.1", None, "dual"),
    ]


def test_dual_view_rule_pairs_the_lateral_of_the_same_side() -> None:
    routing = parse_config(
        {"routing": {"rules": [{"name": "dual", "engine": "hipnet", "when": {"Modality": ["DX"]}}]}}
    ).routing
    pelvis = image("1")
    lateral_l = image("2", ViewPosition="LL", ImageLaterality="L")
    assert summary(plan_tasks([lateral_l, pelvis], routing)) == [
        ("hipnet", "R", "1.2.3.1", None, "dual"),
        ("hipnet", "L", "1.2.3.1", "1.2.3.2", "dual"),
    ]
    # A retake, received after the exposure it replaces, is the partner (was: the first).
    retake = image("3", ViewPosition="LL", ImageLaterality="L")
    tasks = plan_tasks([lateral_l, pelvis, retake], routing)
    assert summary(tasks)[1] == ("hipnet", "L", "1.2.3.1", "1.2.3.3", "dual")
    # The earlier one stays at hand, should the retake be unreadable.
    assert [i.sop_instance_uid for i in tasks[1].lateral_alternatives] == ["1.2.3.2"]
    assert tasks[0].lateral_alternatives == ()


def test_custom_lateral_views_are_upper_cased() -> None:
    routing = parse_config(
        {
            "routing": {
                "rules": [{"name": "dual", "engine": "hipnet"}],
                "lateral_views": ["xtable"],
            }
        }
    ).routing
    cross_table = image("2", ViewPosition="XTABLE", ImageLaterality="R")
    tasks = plan_tasks([image("1"), cross_table], routing)
    assert summary(tasks) == [
        ("hipnet", "R", "1.2.3.1", "1.2.3.2", "dual"),
        ("hipnet", "L", "1.2.3.1", None, "dual"),
    ]


# --- cascade ------------------------------------------------------------------------


def test_cascade_adds_hipnet_only_for_hips_with_an_arthroplasty() -> None:
    pelvis = image("1")
    screen_r, screen_l = plan_tasks([pelvis], DEFAULT)
    decisions = [
        decision(screen_r, normal=0.9),
        decision(screen_l, total_hip_arthroplasty=0.8),
    ]
    tasks = cascade_tasks(decisions, [pelvis], DEFAULT, done=(screen_r, screen_l))
    assert summary(tasks) == [
        ("hipnet", "L", "1.2.3.1", None, "cascade:hip_screen:total_hip_arthroplasty"),
    ]
    assert tasks[0].ap is pelvis
    # What started it, for the worklist line to name the finding after it.
    assert tasks[0].trigger == ("hip_screen", "total_hip_arthroplasty")
    assert screen_l.trigger is None


def test_cascade_ignores_other_present_findings_and_absent_arthroplasty() -> None:
    pelvis = image("1")
    screen_r, screen_l = plan_tasks([pelvis], DEFAULT)
    decisions = [
        decision(screen_r, osteoarthritis=0.9, total_hip_arthroplasty=0.49),
        decision(screen_l, metallic_internal_fixation=0.9),
    ]
    assert cascade_tasks(decisions, [pelvis], DEFAULT) == ()
    assert cascade_tasks([], [pelvis], DEFAULT) == ()


def test_cascade_pairs_the_lateral_of_the_same_side_only() -> None:
    pelvis = image("1")
    lateral_r = image("2", ViewPosition="LL", ImageLaterality="R")
    lateral_l = image("3", ViewPosition="RLO", Laterality="L")
    lateral_both = image("4", ViewPosition="LATERAL", ImageLaterality="B")
    study = [pelvis, lateral_r, lateral_l, lateral_both]
    screen = plan_tasks(study, DEFAULT)
    assert [t.side for t in screen] == ["R", "L"]  # the laterals give no task of their own
    screen_r, screen_l = screen
    both = [decision(t, total_hip_arthroplasty=0.9) for t in screen]
    assert summary(cascade_tasks(both, study, DEFAULT)) == [
        ("hipnet", "R", "1.2.3.1", "1.2.3.2", "cascade:hip_screen:total_hip_arthroplasty"),
        ("hipnet", "L", "1.2.3.1", "1.2.3.3", "cascade:hip_screen:total_hip_arthroplasty"),
    ]
    # Only a lateral of the other side (or of both sides): the left hip goes without one.
    left_only = [decision(screen_l, total_hip_arthroplasty=0.9)]
    for others in ([pelvis, lateral_r], [pelvis, lateral_both], [pelvis]):
        (task,) = cascade_tasks(left_only, others, DEFAULT)
        assert (task.engine, task.side, task.lateral) == ("hipnet", "L", None)
    assert screen_r.lateral is None  # hip_screen is single-view: never paired


def test_cascade_does_not_repeat_a_task_already_done() -> None:
    pelvis = image("1")
    screen_r, screen_l = plan_tasks([pelvis], DEFAULT)
    decisions = [decision(t, total_hip_arthroplasty=0.9) for t in (screen_r, screen_l)]
    first = cascade_tasks(decisions, [pelvis], DEFAULT, done=(screen_r, screen_l))
    assert [t.side for t in first] == ["R", "L"]
    assert cascade_tasks(decisions, [pelvis], DEFAULT, done=(screen_r, screen_l, *first)) == ()
    (left,) = cascade_tasks(decisions, [pelvis], DEFAULT, done=(first[0],))
    assert (left.engine, left.side) == ("hipnet", "L")
    # The same decision given twice still gives one task per hip.
    assert len(cascade_tasks(decisions * 2, [pelvis], DEFAULT)) == 2


def test_cascade_only_follows_its_first_engine() -> None:
    pelvis = image("1")
    hipnet_task = HipTask("hipnet", "R", pelvis, rule="dual")
    prediction = Prediction(hipnet_task, "t", engine_spec("hipnet").class_names, (0.9,) * 5, {})
    # A finding of that name from another engine does not trigger the cascade.
    foreign = TriageDecision(
        prediction, (HipFinding("total_hip_arthroplasty", 0.9, 0.5, True, False),), "FLAG"
    )
    assert cascade_tasks([foreign], [pelvis], DEFAULT) == ()
    no_cascade = parse_config({"routing": {"cascade": []}}).routing
    screen_r, _ = plan_tasks([pelvis], DEFAULT)
    assert (
        cascade_tasks([decision(screen_r, total_hip_arthroplasty=0.9)], [pelvis], no_cascade) == ()
    )


def ct_slice(uid: str, series: str = "1.2.3.200", **extra: str) -> SourceImage:
    ds = header(uid, **{"Modality": "CT", "ViewPosition": "", "BodyPartExamined": "HIP", **extra})
    ds.SOPClassUID = CT
    ds.SeriesInstanceUID = series
    return source_image(ds, Path(f"spool/{uid}.dcm"), "PACS")


def test_a_radiograph_with_a_ct_series_also_goes_to_the_multimodal_engine() -> None:
    pelvis = image("1")
    slices = [ct_slice(str(n)) for n in range(10, 14)]
    other = ct_slice("20", series="1.2.3.300")  # a second, smaller CT series
    tasks = plan_tasks([pelvis, other, *slices], DEFAULT)
    assert [(t.engine, t.side, t.ct_series) for t in tasks] == [
        ("hip_screen", "R", None),
        ("hip_screen", "L", None),
        ("hip_multimodal", "R", "1.2.3.200"),
        ("hip_multimodal", "L", "1.2.3.200"),
    ]
    assert tasks[2].rule == "hip-radiograph-with-ct"
    # One CT slice is no volume: the rule that requires a CT holds back.
    tasks = plan_tasks([pelvis, slices[0]], DEFAULT)
    assert {t.engine for t in tasks} == {"hip_screen"}


def test_a_ct_of_one_hip_goes_with_that_hip_only() -> None:
    pelvis = image("1")
    right = [ct_slice(str(n), series="1.2.3.400", Laterality="R") for n in range(10, 16)]
    left = [ct_slice(str(n), series="1.2.3.500", Laterality="L") for n in range(20, 23)]
    assert ct_series([*right, *left]) == "1.2.3.400"  # any hip: the one with most slices
    assert (ct_series(right, "R"), ct_series(right, "L")) == ("1.2.3.400", None)
    assert ct_series([*right, *left], "L") == "1.2.3.500"
    tasks = plan_tasks([pelvis, *right], DEFAULT)
    # `requires: [ct]` is per hip: the left hip has no CT, so no multimodal task for it.
    assert [(t.engine, t.side, t.ct_series) for t in tasks] == [
        ("hip_screen", "R", None),
        ("hip_screen", "L", None),
        ("hip_multimodal", "R", "1.2.3.400"),
    ]
    tasks = plan_tasks([pelvis, *right, *left], DEFAULT)
    assert [(t.side, t.ct_series) for t in tasks if t.engine == "hip_multimodal"] == [
        ("R", "1.2.3.400"),
        ("L", "1.2.3.500"),
    ]


def test_a_radiograph_with_age_and_sex_also_goes_to_the_osteoporosis_engine() -> None:
    ds = header("1", ImageLaterality="R", PatientAge="071Y", PatientSex="F")
    with_demographics = source_image(ds, Path("spool/1.dcm"), "PACS")
    assert with_demographics.clinical is not None
    tasks = plan_tasks([with_demographics], DEFAULT)
    assert [(t.engine, t.side, t.rule) for t in tasks] == [
        ("hip_screen", "R", "hip-ap-radiographs"),
        ("osteoporosis", "R", "hip-osteoporosis-risk"),
    ]
    # Age alone is not enough by default; the requirement is configurable.
    ds = header("2", ImageLaterality="R", PatientAge="071Y")
    age_only = source_image(ds, Path("spool/2.dcm"), "PACS")
    assert {t.engine for t in plan_tasks([age_only], DEFAULT)} == {"hip_screen"}
    routing = parse_config(
        {"routing": {"rules": [{"name": "bone", "engine": "osteoporosis", "requires": ["age"]}],
                     "cascade": []}}
    ).routing  # fmt: skip
    assert [t.engine for t in plan_tasks([age_only], routing)] == ["osteoporosis"]


@pytest.mark.filterwarnings("ignore:Failed to decode byte string")
def test_a_rule_may_require_clinical_text() -> None:
    routing = parse_config(
        {"routing": {"rules": [{"name": "fusion", "engine": "hip_multimodal",
                                "requires": ["text"]}], "cascade": []}}
    ).routing  # fmt: skip
    silent = image("1", ImageLaterality="L")
    ds = header("2", ImageLaterality="L", AdditionalPatientHistory="groin pain, ?FAI")
    told = source_image(ds, Path("spool/2.dcm"), "PACS")
    assert plan_tasks([silent], routing) == ()
    (task,) = plan_tasks([told], routing)
    assert (task.engine, task.side, task.ct_series) == ("hip_multimodal", "L", None)
    # The text is kept for the engine, never shown in a repr (logs).
    assert "FAI" not in repr(told) and told.clinical is not None
    assert "FAI" in told.clinical.text.text
    # Text whose bytes the character set does not decode is left out of what the engine
    # reads: it does not meet the requirement (the engine ran on no text), and is named.
    ds.SpecificCharacterSet = "ISO_IR 192"
    latin_1 = b"H\xfcftschmerz links"  # as read from a file, decoded when first used
    ds[0x001021B0] = RawDataElement(Tag(0x001021B0), "LT", len(latin_1), latin_1, 0, False, True)
    garbled = source_image(ds, Path("spool/2.dcm"), "PACS")
    assert garbled.clinical is not None and not garbled.clinical.text.request.empty
    assert plan_tasks([garbled], routing) == ()
    assert held_back([garbled], routing, ()) == (
        "not run: hip_multimodal on SOP instance 1.2.3.2 (rule 'fusion' requires text; text: "
        "in the header, but not text that decodes in the data set's Specific Character Set "
        "and holds a word the engine's text encoder reads)",
    )


def test_required_text_is_text_the_rules_engine_reads() -> None:
    # "N/A" met `requires: [text]`, then the engine read it as no text: the multimodal
    # engine ran on what the rule was there to hold back, its finding flipped.
    routing = parse_config(
        {"routing": {"rules": [{"name": "fusion", "engine": "hip_multimodal",
                                "requires": ["text"]}], "cascade": []}}
    ).routing  # fmt: skip
    asked: list[tuple[str, str]] = []

    def reads(engine: str, text: str) -> bool:  # as EngineSet.reads_text answers
        asked.append((engine, text))
        return bool(text) and "N/A" not in text

    placeholder = image("1", ImageLaterality="L", ReasonForTheRequestedProcedure="N/A")
    assert plan_tasks([placeholder], routing, reads) == ()
    assert asked[0] == ("hip_multimodal", "N/A.")  # the request's parts, as sentences
    unmet = (
        "not run: hip_multimodal on SOP instance 1.2.3.1 (rule 'fusion' requires text; text: "
        "in the header, but not text that decodes in the data set's Specific Character Set "
        "and holds a word the engine's text encoder reads)"
    )
    assert held_back([placeholder], routing, (), reads) == (unmet,)
    assert why_none([placeholder], routing, reads) == (
        "no routing rule selected an image of this study (1 matched rule 'fusion', held back "
        "by its requires (text: in the header, but not text that decodes in the data set's "
        "Specific Character Set and holds a word the engine's text encoder reads))"
    )
    told = image("2", ImageLaterality="L", ReasonForTheRequestedProcedure="groin pain")
    assert [t.engine for t in plan_tasks([told], routing, reads)] == ["hip_multimodal"]
    # Without engines (the default reader) any decoded text meets it, as before.
    assert [t.engine for t in plan_tasks([placeholder], routing)] == ["hip_multimodal"]


def test_the_lateral_partner_is_a_hip_radiograph_not_any_lateral() -> None:
    # A knee lateral of the same side, a CT slice and a For Processing copy arrive first:
    # none is the hip's lateral.
    routing = parse_config(
        {"routing": {"rules": [{"name": "dual", "engine": "hipnet", "when": {"Modality": ["DX"]}}]}}
    ).routing
    pelvis = image("1")
    knee = image("2", ViewPosition="LL", ImageLaterality="L", BodyPartExamined="KNEE")
    ct = image("3", ViewPosition="LL", ImageLaterality="L", Modality="CT")
    raw = image("4", ViewPosition="LL", ImageLaterality="L", SOPClassUID=DX_FOR_PROCESSING)
    hip = image("5", ViewPosition="LL", ImageLaterality="L", BodyPartExamined="HIP")
    tasks = plan_tasks([knee, ct, raw, pelvis, hip], routing)
    assert summary(tasks)[1] == ("hipnet", "L", "1.2.3.1", "1.2.3.5", "dual")
    assert summary(plan_tasks([knee, ct, raw, pelvis], routing))[1][3] is None  # AP alone


def test_a_for_processing_copy_is_not_analysed_beside_its_presentation_copy() -> None:
    shown = image("1")
    raw = image("2", SOPClassUID=DX_FOR_PROCESSING)
    assert [t.ap.sop_instance_uid for t in plan_tasks([shown, raw], DEFAULT)] == [
        "1.2.3.1",
        "1.2.3.1",
    ]


def test_a_study_of_for_processing_images_only_says_why_it_was_skipped() -> None:
    # Was "no routing rule selected an image": the admin looked for a fault in the rules.
    raw = image("2", SOPClassUID=DX_FOR_PROCESSING)
    assert plan_tasks([raw], DEFAULT) == ()
    assert why_none([raw], DEFAULT) == (
        "no routing rule selected an image of this study (1 matched a rule but is DX For "
        "Processing, which the engines never read; send the For Presentation copy)"
    )
    knee = image("3", BodyPartExamined="KNEE")  # no rule matches: nothing more to say
    assert why_none([knee], DEFAULT) == "no routing rule selected an image of this study"


def test_why_none_names_what_held_each_matched_image_back() -> None:
    # Every case read "no routing rule selected an image", sending the admin to the rules'
    # `when`; a CT got the advice to send "the For Presentation copy".
    rule = {"name": "mm", "engine": "hip_multimodal", "when": {"Modality": ["DX", "CT"]},
            "requires": ["ct"]}  # fmt: skip
    routing = parse_config({"routing": {"rules": [rule], "cascade": []}}).routing
    lateral = image("4", ViewPosition="LL", ImageLaterality="L")
    ct = image("5", Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    assert plan_tasks([image("1"), lateral, ct], routing) == ()
    assert why_none([image("1"), lateral, ct], routing) == (
        "no routing rule selected an image of this study (1 matched a rule but is a lateral "
        "view, which are only ever an AP's partner; 1 matched a rule but is CT Image Storage, "
        "which the engines never read; 1 matched rule 'mm', held back by its requires (ct: "
        "not in the study))"
    )


def test_only_a_ct_that_may_show_the_hips_is_a_ct_input() -> None:
    # A CT engine fits the series' whole field into its grid: a chest CT in the same study
    # (more slices than the hip CT) must not become the hips' CT, nor satisfy `requires`.
    pelvis = image("1")
    chest = [ct_slice(str(n), series="1.2.3.910", BodyPartExamined="CHEST") for n in range(30, 40)]
    hips = [ct_slice(str(n), series="1.2.3.920", BodyPartExamined="PELVIS") for n in range(40, 44)]
    unnamed = [ct_slice(str(n), series="1.2.3.930", BodyPartExamined="") for n in range(50, 52)]
    assert ct_series([*chest, *hips]) == "1.2.3.920"
    assert ct_series(chest) is None
    assert ct_series(unnamed) == "1.2.3.930"  # many CTs carry no body part: kept
    # Every candidate, the most slices first: the next is used where one cannot be read.
    assert ct_candidates([*unnamed, *chest, *hips]) == ("1.2.3.920", "1.2.3.930")
    # Chest-abdomen-pelvis and whole body: 600-1500 mm fitted into the grid squeeze the hips.
    for long in ("CHESTABDPELVIS", "WHOLEBODY"):
        body = [ct_slice(str(n), series="1.2.3.940", BodyPartExamined=long) for n in range(60, 90)]
        assert ct_series([*body, *hips]) == "1.2.3.920"
    assert {t.engine for t in plan_tasks([pelvis, *chest], DEFAULT)} == {"hip_screen"}
    tasks = plan_tasks([pelvis, *chest, *hips], DEFAULT)
    assert {t.ct_series for t in tasks if t.engine == "hip_multimodal"} == {"1.2.3.920"}
    # A site whose hip CTs are labelled otherwise lists that value.
    routing = parse_config({"routing": {"ct_body_parts": ["chest"]}}).routing
    tasks = plan_tasks([pelvis, *chest, *hips], routing)
    assert {t.ct_series for t in tasks if t.engine == "hip_multimodal"} == {"1.2.3.910"}


def test_a_ct_without_laterality_goes_to_the_hip_its_geometry_shows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Two one-hip CTs without Laterality: the right one has more slices, but the left hip
    # gets the left one (what dicom_node.ct_input would use), not the right one it would
    # then refuse. A field near the table's centre says no side: no hip gets it.
    import numpy as np

    from dicom_node.synthetic import StudyIdentity, make_ct_series

    def series(uid: str, slices: int, x_mm: float) -> list[SourceImage]:
        datasets = make_ct_series(
            np.zeros((slices, 8, 8)), identity=StudyIdentity.synthetic(1), series_uid=uid,
            spacing_mm=(2.0, 16.0, 16.0), origin_mm=(x_mm, 0.0, 0.0), laterality="B",
        )  # fmt: skip
        images = []
        for ds in datasets:
            if "Laterality" in ds:
                del ds.Laterality  # a site's CT often has none
            images.append(source_image(ds, Path(f"spool/{ds.SOPInstanceUID}.dcm"), "PACS"))
        return images

    right = series("1.2.3.700", 6, -150.0)  # 128 mm wide, centred at x = -94 mm
    left = series("1.2.3.800", 4, 30.0)  # centred at x = +86 mm
    assert right[0].x_range == pytest.approx((-158.0, -30.0))
    assert (ct_series([*right, *left], "R"), ct_series([*right, *left], "L")) == (
        "1.2.3.700",
        "1.2.3.800",
    )
    assert ct_series([*right, *left]) == "1.2.3.700"  # without a side: the largest
    centred = series("1.2.3.900", 6, -60.0)  # centred at x = -4 mm
    with caplog.at_level(logging.WARNING, logger="dicom_node.route.plan"):
        assert (ct_series(centred, "R"), ct_series(centred, "L")) == (None, None)
    # Dropped before ct_input ever reads it: the docs' promised log line was never written.
    assert (
        "CT series 1.2.3.900: one hip without laterality, its field centred at x = -4.0 mm "
        "(too near the table's centre to tell which): not used for the right hip"
    ) in caplog.text


def test_a_localizer_or_a_dose_report_is_no_hips_ct() -> None:
    pelvis = image("1")
    right = [ct_slice(str(n), series="1.2.3.400", Laterality="R") for n in range(10, 16)]
    topogram = [
        ct_slice(str(n), series="1.2.3.450", ImageType="ORIGINAL\\PRIMARY\\LOCALIZER")
        for n in (30, 31)
    ]
    dose = []  # a dose report: two Secondary Capture pages of Modality CT
    for n in (40, 41):
        ds = header(str(n), Modality="CT", ViewPosition="", BodyPartExamined="HIP")
        ds.SOPClassUID, ds.SeriesInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.460"
        dose.append(source_image(ds, Path(f"spool/{n}.dcm"), "PACS"))
    for extra in (topogram, dose):
        assert not any(i.ct_slice for i in extra)
        tasks = plan_tasks([pelvis, *right, *extra], DEFAULT)
        # Was: the left hip went to the multimodal engine with a CT it then refused.
        assert [(t.side, t.ct_series) for t in tasks if t.engine == "hip_multimodal"] == [
            ("R", "1.2.3.400")
        ]


def test_an_enhanced_ct_shows_its_side_through_its_functional_groups() -> None:
    ds = header("50", Modality="CT", ViewPosition="", BodyPartExamined="HIP")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image
    ds.SeriesInstanceUID = "1.2.3.600"
    ds.Rows = ds.Columns = 8
    ds.NumberOfFrames = 10
    shared, orientation, measures = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = [16.0, 16.0]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for z in range(10):
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = [30.0, 0.0, 2.0 * z]  # the left hip's side
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    enhanced = source_image(ds, Path("spool/50.dcm"), "PACS")
    assert enhanced.ct_slice and enhanced.x_range == pytest.approx((22.0, 150.0))  # was: None
    right = [ct_slice(str(n), series="1.2.3.400", Laterality="R") for n in range(10, 13)]
    # Was: it outranked the right hip's own CT (10 frames to 3 slices) and the right hip
    # lost it; now it is the left hip's.
    assert (ct_series([*right, enhanced], "R"), ct_series([*right, enhanced], "L")) == (
        "1.2.3.400",
        "1.2.3.600",
    )


def test_several_values_are_joined_as_dicom_writes_them() -> None:
    ds = header("1")
    ds.ViewPosition = ["AP", "PA"]  # VM 1 by the standard; some senders write two
    # Was "['AP', 'PA']", which no rule could mean.
    assert attributes_of(ds, "PACS")["ViewPosition"] == "AP\\PA"
    routing = parse_config(
        {"routing": {"rules": [{"name": "ap", "engine": "hip_screen",
                                "when": {"ViewPosition": "AP(\\\\.*)?"}}]}}
    ).routing  # fmt: skip
    assert rule_matches(routing.rules[0], attributes_of(ds, "PACS"))


def test_a_localizer_in_the_series_does_not_widen_its_field() -> None:
    import copy

    import numpy as np

    from dicom_node.synthetic import StudyIdentity, make_ct_series

    datasets = make_ct_series(
        np.zeros((6, 8, 8)), identity=StudyIdentity.synthetic(1), series_uid="1.2.3.700",
        spacing_mm=(2.0, 16.0, 16.0), origin_mm=(-150.0, 0.0, 0.0), laterality="B",
    )  # fmt: skip
    topogram = copy.deepcopy(datasets[0])  # kept in the slices' series, as some scanners do
    topogram.SOPInstanceUID = "1.2.3.799"
    topogram.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    topogram.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    topogram.ImagePositionPatient = [-250, 0, 0]
    topogram.PixelSpacing = [64, 64]  # 512 mm across: both hips
    images = []
    for ds in [*datasets, topogram]:
        if "Laterality" in ds:
            del ds.Laterality  # a site's CT often has none
        images.append(source_image(ds, Path(f"spool/{ds.SOPInstanceUID}.dcm"), "PACS"))
    # The slices show the right hip alone; the topogram's width does not make them both.
    assert (ct_series(images, "R"), ct_series(images, "L")) == ("1.2.3.700", None)


def test_only_radiographs_are_read_as_an_ap_or_a_lateral() -> None:
    # Another product's colour Secondary Capture that copies its source's Modality, body
    # part and view was routed as an AP and failed the study (RGB); a rule without `when`
    # matched CT slices too.
    pelvis = image("1")
    capture = image("2", SOPClassUID="1.2.840.10008.5.1.4.1.1.7")  # DX, PELVIS, AP
    lateral_capture = image("3", SOPClassUID="1.2.840.10008.5.1.4.1.1.7", ViewPosition="LL",
                            ImageLaterality="L", BodyPartExamined="HIP")  # fmt: skip
    cr = image("4", SOPClassUID="1.2.840.10008.5.1.4.1.1.1", Modality="CR")
    ct = ct_slice("5", series="1.2.3.500")
    routing = parse_config(
        {"routing": {"rules": [{"name": "all", "engine": "hipnet"}], "cascade": []}}
    ).routing
    tasks = plan_tasks([pelvis, capture, lateral_capture, cr, ct], routing)
    pairs = {(t.ap.sop_instance_uid, t.lateral and t.lateral.sop_instance_uid) for t in tasks}
    assert pairs == {("1.2.3.1", None), ("1.2.3.4", None)}


def test_a_sagittal_series_measures_as_wide_as_its_volume() -> None:
    # Each sagittal slice has no width in x: the series read one slice spacing narrower than
    # its volume, and a 250 mm bilateral field (248 mm so) was dropped for both hips.
    import numpy as np

    from dicom_node.synthetic import StudyIdentity, make_ct_series
    from engines.ct_grid import BILATERAL_FIELD_MM

    slices, step = 125, 2.0
    datasets = make_ct_series(
        np.zeros((slices, 8, 8)), identity=StudyIdentity.synthetic(2), series_uid="1.2.3.950",
        spacing_mm=(step, 2.0, 2.0), origin_mm=(slices * step / 2 - step / 2, 0.0, 0.0),
        orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0), laterality="B",
    )  # fmt: skip
    images = []
    for ds in datasets:
        if "Laterality" in ds:
            del ds.Laterality
        images.append(source_image(ds, Path(f"spool/{ds.SOPInstanceUID}.dcm"), "PACS"))
    assert slices * step == BILATERAL_FIELD_MM
    assert (ct_series(images, "R"), ct_series(images, "L")) == ("1.2.3.950", "1.2.3.950")


# --- a header value present but unusable ---------------------------------------------

AGE_WORDS = (
    "age: in the header, but not a usable age (malformed, over 120 years, from a placeholder "
    "birth date, or not what the birth and study dates give)"
)


def test_an_unusable_header_value_that_holds_an_engine_back_is_named() -> None:
    # The default osteoporosis rule requires age and sex: a Patient's Sex U, or an age the
    # dates contradict, left the engine out of the SR as silently as a value never sent.
    contradicted = image("1", PatientAge="045Y", PatientBirthDate="19580301",
                         StudyDate="20250301", PatientSex="U")  # fmt: skip
    tasks = plan_tasks([contradicted], DEFAULT)
    assert {t.engine for t in tasks} == {"hip_screen"}
    assert held_back([contradicted], DEFAULT, tasks) == (
        "not run: osteoporosis on SOP instance 1.2.3.1 (rule 'hip-osteoporosis-risk' requires "
        f"age, sex; {AGE_WORDS}; sex: in the header, but not M, F or O)",
    )
    # Not sent at all: what `requires` is for; nothing to say.
    absent = image("2")
    assert held_back([absent], DEFAULT, plan_tasks([absent], DEFAULT)) == ()
    # Usable: the engine runs.
    usable = image("3", PatientAge="067Y", PatientSex="F")
    tasks = plan_tasks([usable], DEFAULT)
    assert "osteoporosis" in {t.engine for t in tasks}
    assert held_back([usable], DEFAULT, tasks) == ()


def test_held_back_names_only_what_is_unusable_and_not_an_engine_another_rule_ran() -> None:
    rules = [
        {"name": "needs-weight", "engine": "osteoporosis", "when": {"Modality": ["DX"]},
         "requires": ["weight", "ct"]},
        {"name": "needs-sex", "engine": "hip_screen", "when": {"Modality": ["DX"]},
         "requires": ["sex"]},
        {"name": "plain", "engine": "hip_screen", "when": {"Modality": ["DX"]}},
    ]  # fmt: skip
    routing = parse_config({"routing": {"rules": rules, "cascade": []}}).routing
    # A weight in grams and a sex of U; hip_screen still ran (by "plain"): not held back.
    grams = image("1", PatientWeight="70000", PatientSex="U")
    tasks = plan_tasks([grams], routing)
    assert {t.engine for t in tasks} == {"hip_screen"}
    assert held_back([grams], routing, tasks) == (
        "not run: osteoporosis on SOP instance 1.2.3.1 (rule 'needs-weight' requires weight, "
        "ct; ct: not in the study; weight: in the header, but not a weight in kilograms from "
        "2 to 400)",
    )


def test_why_none_says_which_requirement_is_unusable_rather_than_not_sent() -> None:
    rule = {"name": "needs-age", "engine": "osteoporosis", "when": {"Modality": ["DX"]},
            "requires": ["age", "sex"]}  # fmt: skip
    routing = parse_config({"routing": {"rules": [rule], "cascade": []}}).routing
    placeholder = image("1", PatientBirthDate="19000101", StudyDate="20250301")
    assert plan_tasks([placeholder], routing) == ()
    assert why_none([placeholder], routing) == (
        "no routing rule selected an image of this study (1 matched rule 'needs-age', held "
        f"back by its requires ({AGE_WORDS}; sex: not in the study))"
    )


def test_a_study_of_many_ap_images_reads_the_ones_received_last() -> None:
    # Each AP image read is held decoded until the results are built: 25 AP images of
    # 3000 x 3000 took the node past 3.3 GB, 300 would have taken ~20 GB.
    images = [image(str(n)) for n in range(1, MAX_RADIOGRAPHS + 3)]
    routing = parse_config({"routing": {"cascade": []}}).routing  # hip_screen, osteoporosis
    tasks = plan_tasks(images, routing)
    read = sorted({t.ap.sop_instance_uid for t in tasks}, key=lambda u: int(u.rsplit(".", 1)[1]))
    assert read == [f"1.2.3.{n}" for n in range(3, MAX_RADIOGRAPHS + 3)]
    assert unused(images, routing, tasks) == tuple(
        f"not used: SOP instance 1.2.3.{n} (the study holds more than {MAX_RADIOGRAPHS} AP "
        f"images the rules select: the {MAX_RADIOGRAPHS} received last were read)"
        for n in (1, 2)
    )
    # The lateral of a hip whose only AP the bound left unread: was "the study has no AP".
    right = image("100", ImageLaterality="R")
    lateral_r = image("101", ViewPosition="LL", ImageLaterality="R")
    lefts = [image(str(n), ImageLaterality="L") for n in range(1, MAX_RADIOGRAPHS + 1)]
    study = [right, lateral_r, *lefts]
    dual = parse_config({"routing": {"rules": [
        {"name": "dual", "engine": "hipnet", "when": {"Modality": ["DX"]}}]}}).routing  # fmt: skip
    assert unused(study, dual, plan_tasks(study, dual)) == (
        f"not used: SOP instance 1.2.3.100 (the study holds more than {MAX_RADIOGRAPHS} AP "
        f"images the rules select: the {MAX_RADIOGRAPHS} received last were read)",
        "not used: SOP instance 1.2.3.101 (a lateral of the right hip, whose AP images were "
        f"not read (the study holds more than {MAX_RADIOGRAPHS} AP images the rules select))",
    )
    # One a site's rule selects beyond the hip's body parts is named too (was: nowhere).
    site = parse_config({"routing": {"cascade": [], "rules": [
        {"name": "leg", "engine": "hip_screen",
         "when": {"BodyPartExamined": ["PELVIS", "LOWLIMB"]}}]}}).routing  # fmt: skip
    leg = [image("1", BodyPartExamined="LOWLIMB"), *images[1:]]
    assert unused(leg, site, plan_tasks(leg, site))[0].startswith(
        "not used: SOP instance 1.2.3.1 (the study holds more than"
    )
    assert plan_tasks(images[:MAX_RADIOGRAPHS], routing)  # at the limit: every one read
    assert (
        unused(images[:MAX_RADIOGRAPHS], routing, plan_tasks(images[:MAX_RADIOGRAPHS], routing))
        == ()
    )


def test_unused_names_the_hip_radiographs_no_engine_read() -> None:
    # Was silent: the SR read COMPLETE while these went unread.
    right_ap = image("1", BodyPartExamined="HIP", ImageLaterality="R")
    left_lateral = image("2", BodyPartExamined="HIP", ViewPosition="LL", ImageLaterality="L")
    right_lateral = image("3", BodyPartExamined="HIP", ViewPosition="LL", ImageLaterality="R")
    no_view = image("4", ViewPosition="")
    chest = image("5", BodyPartExamined="CHEST", ViewPosition="")
    images = [right_ap, left_lateral, right_lateral, no_view, chest]
    tasks = plan_tasks(images, DEFAULT)  # hip_screen (and osteoporosis when age and sex)
    assert unused(images, DEFAULT, tasks) == (
        "not used: SOP instance 1.2.3.2 (a lateral of the left hip, and the study has no AP "
        "of that hip)",
        "not used: SOP instance 1.2.3.3 (a lateral of the right hip: no engine that reads "
        "laterals ran on it)",
        "not used: SOP instance 1.2.3.4 (no routing rule selects it (View Position not given))",
    )  # the chest image is not a hip radiograph: not named
    # A lateral Hip-Net read, and an earlier one its retake replaced, are not named.
    dual = parse_config({"routing": {"rules": [{"name": "dual", "engine": "hipnet"}]}}).routing
    retake = image("6", BodyPartExamined="HIP", ViewPosition="LL", ImageLaterality="R")
    images = [right_ap, right_lateral, retake]
    assert unused(images, dual, plan_tasks(images, dual)) == ()
    # Nor, when no engine reads laterals, the earlier one (was: both named).
    assert unused(images, DEFAULT, plan_tasks(images, DEFAULT)) == (
        "not used: SOP instance 1.2.3.6 (a lateral of the right hip: no engine that reads "
        "laterals ran on it)",
    )
    both = image("7", BodyPartExamined="HIP", ViewPosition="LL", ImageLaterality="B")
    images = [right_ap, both]
    assert unused(images, DEFAULT, plan_tasks(images, DEFAULT)) == (
        "not used: SOP instance 1.2.3.7 (a lateral whose laterality is not R or L: its hip is "
        "not known)",
    )
