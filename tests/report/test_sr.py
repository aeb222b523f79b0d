"""The study's TID 1500 Structured Report, built from hand-made decisions over a phantom study."""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from helpers import dciodvfy_findings, run_tool
from manifests import manifest_for
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_node.config_results import TriageConfig
from dicom_node.identity import MANUFACTURER, MODEL_NAME, SOFTWARE_VERSION
from dicom_node.models import HipFinding, HipTask, Prediction, SourceImage, TriageDecision
from dicom_node.report.sr import (
    ReportError,
    as_latest_report,
    build_sr,
    description,
    reported_findings,
    supersede,
)
from dicom_node.report.uids import ResultIdentity, device_uid, series_uid, sr_identity
from dicom_node.triage import decide, study_priority
from engines.catalog import Finding
from engines.manifest import Manifest
from engines.phantoms.studies import write_study

THA = "total_hip_arthroplasty"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
HIP_JOINT = ("24136001", "SCT")
HIP = ("29836001", "SCT")
LATERALITY = {"R": ("24028007", "SCT"), "L": ("7771000", "SCT")}
PRESENT, ABSENT = ("52101004", "SCT"), ("272519000", "SCT")
PRIORITY_CODES = {
    "URGENT": ("103391001", "SCT"),
    "FLAG": ("111242", "DCM"),
    "NONE": ("111241", "DCM"),
}
PRESENCE_CONCEPT = ("121052", "DCM")
PRIORITY_CONCEPT = ("260870009", "SCT")
ALGORITHM_NAME, ALGORITHM_VERSION, ALGORITHM_PARAMETERS = "111001", "111003", "111002"


SCREEN = manifest_for("hip_screen")
HIPNET = manifest_for("hipnet")
MANIFESTS = {SCREEN.name: SCREEN, HIPNET.name: HIPNET}
BACKENDS = {SCREEN.name: "onnxruntime", HIPNET.name: "tensorrt", "hip_multimodal": "onnxruntime"}


@dataclass(frozen=True)
class Study:
    ap: Dataset  # the AP pelvis header (no pixels)
    lateral: Dataset  # the left hip's lateral header
    ap_source: SourceImage
    lateral_source: SourceImage

    @property
    def headers(self) -> dict[str, Dataset]:
        return {str(ds.SOPInstanceUID): ds for ds in (self.ap, self.lateral)}


def _source(ds: Dataset, path: Path) -> SourceImage:
    return SourceImage(
        str(ds.SOPInstanceUID),
        str(ds.SOPClassUID),
        str(ds.SeriesInstanceUID),
        path,
        str(ds.ViewPosition),
        str(ds.ImageLaterality),
        {},
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    folder = tmp_path_factory.mktemp("sr-study")
    st = write_study(folder, 7, "osteoarthritis", THA, {"L": "aseptic_loosening"}, size=64)
    ap_path, lateral_path = st.files
    ap, lateral = (pydicom.dcmread(p, stop_before_pixels=True) for p in st.files)
    assert (ap.ViewPosition, ap.ImageLaterality) == ("AP", "B")
    assert (lateral.ViewPosition, lateral.ImageLaterality) == ("LL", "L")
    return Study(ap, lateral, _source(ap, ap_path), _source(lateral, lateral_path))


def triage(
    manifest: Manifest,
    side: str,
    ap: SourceImage,
    lateral: SourceImage | None = None,
    pji_risk: float | None = None,
    **probabilities: float,
) -> TriageDecision:
    """The decision of one hip: the named classes at these probabilities, others at 0.01."""
    assert set(probabilities) <= set(manifest.class_names)
    values = tuple(probabilities.get(name, 0.01) for name in manifest.class_names)
    task = HipTask(manifest.name, side, ap, lateral)
    prediction = Prediction(task, manifest.version, manifest.class_names, values, {}, pji_risk)
    return decide(prediction, manifest, TriageConfig())


def screen_case(study: Study) -> list[TriageDecision]:
    """Both hips of the AP pelvis by hip_screen: R urgent (two positives), L nothing found."""
    right = triage(SCREEN, "R", study.ap_source, femoral_neck_fracture=0.83124, osteoarthritis=0.61)
    left = triage(SCREEN, "L", study.ap_source, normal=0.2, osteonecrosis_of_femoral_head=0.35)
    assert (right.priority, left.priority) == ("URGENT", "NONE")
    return [right, left]


def hipnet_case(study: Study) -> list[TriageDecision]:
    """hip_screen flags a THA on the left, Hip-Net (AP + lateral) finds it loose."""
    screen = triage(SCREEN, "L", study.ap_source, total_hip_arthroplasty=0.9)
    failure = triage(
        HIPNET,
        "L",
        study.ap_source,
        study.lateral_source,
        pji_risk=12.34,
        aseptic_loosening=0.7,
    )
    assert (screen.priority, failure.priority) == ("FLAG", "FLAG")
    return [screen, failure]


def identity_for(study: Study, decisions: Sequence[TriageDecision]) -> ResultIdentity:
    engines = sorted({(d.prediction.task.engine, d.prediction.version) for d in decisions})
    return sr_identity(str(study.ap.StudyInstanceUID), engines, sorted(study.headers), 9001)


def make_sr(
    study: Study,
    decisions: Sequence[TriageDecision],
    priority: str | None = None,
    headers: Mapping[str, Dataset] | None = None,
    manifests: Mapping[str, Manifest] = MANIFESTS,
    institution_name: str = "Phantom Hospital",
    not_analysed: Sequence[tuple[str, str]] = (),
    device: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    return build_sr(
        decisions,
        manifests,
        BACKENDS,
        study.headers if headers is None else headers,
        priority or study_priority(decisions),
        identity_for(study, decisions),
        institution_name=institution_name,
        not_analysed=not_analysed,
        device=device,
    )


# --- reading the content tree ---------------------------------------------------------


def code_of(item: Any) -> tuple[str, str]:
    return str(item.CodeValue), str(item.CodingSchemeDesignator)


def concept(item: Dataset) -> tuple[str, str]:
    return code_of(item.ConceptNameCodeSequence[0])


def children(group: Sequence[Dataset]) -> Sequence[Dataset]:
    """The content items of a measurement group (its container's Content Sequence)."""
    items: Sequence[Dataset] = group[0].ContentSequence
    return items


def text_items(group: Sequence[Dataset], value: str) -> list[str]:
    """The TEXT values of a group's direct children whose concept name has this DCM code."""
    return [
        str(item.TextValue)
        for item in children(group)
        if item.ValueType == "TEXT" and concept(item) == (value, "DCM")
    ]


def image_references(group: Sequence[Dataset]) -> list[str]:
    return [
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in children(group)
        if item.ValueType == "IMAGE"
    ]


def qualitative(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[tuple[str, str], Any]:
    return {code_of(q.name): code_of(q.value) for q in group.get_qualitative_evaluations()}


def report_of(sr: Dataset) -> hd.sr.MeasurementReport:
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def groups_of(sr: Dataset) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    report = report_of(sr)
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = list(
        report.get_image_measurement_groups()
    )
    return groups


def saved(sr: Dataset, path: Path) -> Path:
    sr.save_as(path, enforce_file_format=True)
    return path


# --- reported_findings and description ------------------------------------------------


def test_reported_findings_are_the_positives_most_probable_first(study: Study) -> None:
    right, _ = screen_case(study)
    assert [f.name for f in right.positives] == ["osteoarthritis", "femoral_neck_fracture"]
    assert [f.name for f in reported_findings(right)] == [
        "femoral_neck_fracture",
        "osteoarthritis",
    ]
    three = triage(
        SCREEN,
        "R",
        study.ap_source,
        osteoarthritis=0.55,
        total_hip_arthroplasty=0.9,
        metallic_internal_fixation=0.7,
    )
    assert [f.name for f in reported_findings(three)] == [
        "total_hip_arthroplasty",
        "metallic_internal_fixation",
        "osteoarthritis",
    ]


def test_an_urgent_finding_comes_first_whatever_its_probability(study: Study) -> None:
    # The overlay maps the first and its banner names it beside the hip's priority: was
    # "osteoarthritis p=0.55 - priority URGENT", the fracture that made it urgent unnamed.
    manifest = replace(
        SCREEN,
        classes=tuple(
            replace(c, threshold=0.3) if c.name == "femoral_neck_fracture" else c
            for c in SCREEN.classes
        ),
    )
    hip = triage(manifest, "R", study.ap_source, osteoarthritis=0.55, femoral_neck_fracture=0.35)
    assert hip.priority == "URGENT"
    assert [f.name for f in reported_findings(hip)] == ["femoral_neck_fracture", "osteoarthritis"]
    assert description("URGENT", [hip], {SCREEN.name: manifest}) == (
        "AI triage URGENT: femoral neck fracture R, osteoarthritis R"
    )


def test_reported_findings_without_a_positive_is_the_top_class(study: Study) -> None:
    _, left = screen_case(study)
    (only,) = reported_findings(left)
    assert (only.name, only.present, only.probability) == (
        "osteonecrosis_of_femoral_head",
        False,
        0.35,
    )
    # The normal class present is not a finding: it is reported as the top class.
    normal = triage(SCREEN, "R", study.ap_source, normal=0.9, osteoarthritis=0.3)
    assert normal.positives == ()
    (top,) = reported_findings(normal)
    assert (top.name, top.present, top.normal) == ("normal", True, True)


def test_normal_below_its_threshold_is_never_reported_absent(study: Study) -> None:
    # Nothing crossed its threshold and normal is the most probable class, below its own:
    # "Normal: absent" would read as abnormal. The most probable finding is reported absent.
    unsure = triage(SCREEN, "R", study.ap_source, normal=0.45, osteoarthritis=0.3)
    assert unsure.positives == () and unsure.top.name == "normal"
    (reported,) = reported_findings(unsure)
    assert (reported.name, reported.present, reported.normal) == ("osteoarthritis", False, False)


def test_description_states_priority_and_positive_findings(study: Study) -> None:
    right, left = screen_case(study)
    # Urgent first, then most probable, as the SR's groups are ordered.
    assert description("URGENT", [right, left], MANIFESTS) == (
        "AI triage URGENT: femoral neck fracture R, osteoarthritis R"
    )
    assert description("NONE", [left], MANIFESTS) == "AI triage NONE"
    # The same finding on one side from two engines is named once.
    assert description("FLAG", [right, right], MANIFESTS).count("osteoarthritis R") == 1


def test_description_names_a_finding_once_with_both_sides(study: Study) -> None:
    # Was "femoral neck fracture L, femoral neck fract...": the second side cut off.
    left = triage(SCREEN, "L", study.ap_source, femoral_neck_fracture=0.9, osteoarthritis=0.8)
    right = triage(SCREEN, "R", study.ap_source, femoral_neck_fracture=0.7)
    assert description("URGENT", [left, right], MANIFESTS) == (
        "AI triage URGENT: femoral neck fracture R+L, osteoarthritis L"
    )


def test_description_puts_what_a_cascade_found_before_what_started_it(study: Study) -> None:
    # Was "AI triage FLAG: total hip arthroplasty L, osteoarthritis R, a...": the loosening
    # Hip-Net was run for was cut off behind the prosthesis it was looked for in.
    screen_r = triage(SCREEN, "R", study.ap_source, osteoarthritis=0.9)
    screen_l = triage(SCREEN, "L", study.ap_source, total_hip_arthroplasty=0.99)
    failure = triage(HIPNET, "L", study.ap_source, aseptic_loosening=0.6)
    cascaded = replace(
        failure,
        prediction=replace(
            failure.prediction,
            task=replace(failure.prediction.task, trigger=("hip_screen", "total_hip_arthroplasty")),
        ),
    )
    assert failure.priority == "FLAG"
    text = description("FLAG", [screen_r, screen_l, cascaded], MANIFESTS)
    assert text.startswith("AI triage FLAG: osteoarthritis R, aseptic loosening L, ")
    # A prosthesis on both hips, the cascade started on one: the loosening still comes
    # first (was placed by the other hip's probability, the loosening cut off).
    replaced_r = triage(SCREEN, "R", study.ap_source, total_hip_arthroplasty=0.99)
    text = description("FLAG", [replaced_r, screen_l, cascaded], MANIFESTS)
    assert text == "AI triage FLAG: aseptic loosening L, total hip arthroplasty R+L"
    # Not run by the cascade: by probability, as before.
    assert description("FLAG", [screen_r, screen_l, failure], MANIFESTS).startswith(
        "AI triage FLAG: total hip arthroplasty L, osteoarthritis R, a"
    )


def test_a_cut_description_keeps_the_urgent_finding_of_any_engine(study: Study) -> None:
    # Findings went in the engines' order: the cascade's Hip-Net came after the screening
    # findings, and the 64-character cut dropped the dislocation that made it URGENT.
    screen = triage(SCREEN, "R", study.ap_source, total_hip_arthroplasty=0.99,
                    osteoarthritis=0.9, osteonecrosis_of_femoral_head=0.8)  # fmt: skip
    failure = triage(HIPNET, "R", study.ap_source, dislocation=0.7)
    assert failure.priority == "URGENT"
    text = description("URGENT", [screen, failure], MANIFESTS)
    assert text.startswith("AI triage URGENT: prosthesis dislocation R, total hip arthrop")
    assert len(text) == 64


def test_an_engine_of_one_finding_reports_it_absent_not_a_normal_joint(study: Study) -> None:
    # The osteoporosis engine's "nothing found" class was reported as Normal (Present, 1.0)
    # at the hip joint, beside the same hip's dislocation from Hip-Net.
    bone = manifest_for("osteoporosis")
    hip = triage(bone, "R", study.ap_source, no_osteoporosis=0.96, osteoporosis=0.04)
    (reported,) = reported_findings(hip)
    assert (reported.name, reported.present, reported.probability) == ("osteoporosis", False, 0.04)
    assert hip.priority == "NONE"


def test_long_description_is_cut_to_64_characters(study: Study) -> None:
    many = triage(
        SCREEN,
        "R",
        study.ap_source,
        osteoarthritis=0.9,
        osteonecrosis_of_femoral_head=0.8,
        developmental_dysplasia_of_hip=0.7,
        total_hip_arthroplasty=0.6,
    )
    text = description("FLAG", [many], MANIFESTS)
    assert len(text) == 64
    assert text.startswith("AI triage FLAG: osteoarthritis R, osteonecrosis of the femora")
    assert text.endswith("...")
    sr = make_sr(study, [many])
    assert sr.SeriesDescription == text


# --- the document -----------------------------------------------------------------------


def test_document_header(study: Study) -> None:
    decisions = screen_case(study)
    identity = identity_for(study, decisions)
    sr = make_sr(study, decisions)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.Modality == "SR"
    assert sr.SOPInstanceUID == identity.sop_instance_uid
    assert sr.SeriesInstanceUID == series_uid(
        study.ap.StudyInstanceUID, "sr", "9001", sr.SeriesDescription
    )
    assert (sr.SeriesNumber, sr.InstanceNumber) == (9001, 1)
    assert sr.SeriesInstanceUID not in {study.ap.SeriesInstanceUID, study.lateral.SeriesInstanceUID}
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
        assert sr[keyword].value == study.ap[keyword].value, keyword
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert (sr.Manufacturer, sr.ManufacturerModelName) == (MANUFACTURER, MODEL_NAME)
    assert sr.SoftwareVersions == SOFTWARE_VERSION
    assert sr.InstitutionName == "Phantom Hospital"
    assert sr.SeriesDescription.startswith("AI triage URGENT")
    template = sr.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "1500")
    # Both source instances are evidence, with their series.
    evidence = {
        str(sop.ReferencedSOPInstanceUID)
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == set(study.headers)
    # No local coding scheme is declared when every finding has a SNOMED CT code.
    assert "CodingSchemeIdentificationSequence" not in sr


def test_device_observer_and_procedure(study: Study) -> None:
    sr = make_sr(study, screen_case(study))
    root = {concept(item): item for item in sr.ContentSequence}
    assert code_of(root[("121005", "DCM")].ConceptCodeSequence[0]) == ("121007", "DCM")
    assert str(root[("121012", "DCM")].UID) == device_uid()
    # An installation's own, as the node passes it (State.device_uid).
    mine = make_sr(study, screen_case(study), device="2.25.1234")
    root = {concept(item): item for item in mine.ContentSequence}
    assert str(root[("121012", "DCM")].UID) == "2.25.1234"
    assert root[("121013", "DCM")].TextValue == "dicom-node"
    assert root[("121014", "DCM")].TextValue == MANUFACTURER
    assert root[("121015", "DCM")].TextValue == MODEL_NAME
    assert code_of(root[("121058", "DCM")].ConceptCodeSequence[0]) == ("168537006", "SCT")
    observers = report_of(sr).get_observer_contexts()
    assert len(observers) == 1
    assert code_of(observers[0].observer_type) == ("121007", "DCM")


def test_screen_groups_one_per_reported_finding(study: Study) -> None:
    sr = make_sr(study, screen_case(study))
    groups = groups_of(sr)
    assert [g.tracking_identifier for g in groups] == [
        "hip_screen right hip #1",
        "hip_screen right hip #2",
        "hip_screen left hip #3",
        "study triage",
    ]
    expected = [
        # finding code, site, side, probability, threshold, presence, hip priority
        (("5913000", "SCT"), HIP, "R", 0.8312, "0.400", PRESENT, "URGENT"),
        (("239872002", "SCT"), HIP_JOINT, "R", 0.61, "0.500", PRESENT, "URGENT"),
        (("444849002", "SCT"), HIP_JOINT, "L", 0.35, "0.500", ABSENT, "NONE"),
    ]
    for group, (finding, at, side, probability, threshold, presence, priority) in zip(
        groups, expected, strict=False
    ):
        assert code_of(group.finding_type) == finding
        (site,) = group.finding_sites
        assert code_of(site.value) == at  # a femoral neck fracture: the hip, not its joint
        assert code_of(site.laterality) == LATERALITY[side]
        (measurement,) = group.get_measurements()
        assert code_of(measurement.name) == ("122157", "DCM")
        assert float(measurement.value) == pytest.approx(probability)
        assert code_of(measurement.unit) == ("1", "UCUM")
        # The hip's urgency where it is urgent; never the study's CAD summary ("All
        # algorithms succeeded; without findings" beside another engine's urgent finding).
        urgency = {PRIORITY_CONCEPT: PRIORITY_CODES["URGENT"]} if priority == "URGENT" else {}
        assert qualitative(group) == {PRESENCE_CONCEPT: presence, **urgency}
        assert text_items(group, ALGORITHM_NAME) == ["hip_screen"]
        assert text_items(group, ALGORITHM_VERSION) == ["1.2.3-test"]
        assert text_items(group, ALGORITHM_PARAMETERS) == [
            "backend=onnxruntime",
            f"threshold={threshold}",
            "views=AP",
        ]
        assert image_references(group) == [str(study.ap.SOPInstanceUID)]
        assert group.tracking_uid is not None
    assert len({g.tracking_uid for g in groups}) == len(groups)


def test_a_probability_just_under_its_threshold_is_not_rounded_onto_it(study: Study) -> None:
    # round(0.39996, 4) is 0.4: the NUM read 0.4 beside threshold=0.400 and Presence Absent.
    hip = triage(SCREEN, "R", study.ap_source, normal=0.2, femoral_neck_fracture=0.39996)
    assert hip.priority == "NONE"
    (group, _) = groups_of(make_sr(study, [hip]))
    (measurement,) = group.get_measurements()
    assert float(measurement.value) == 0.3999
    assert "threshold=0.400" in text_items(group, ALGORITHM_PARAMETERS)
    assert qualitative(group)[PRESENCE_CONCEPT] == ABSENT


@pytest.mark.parametrize(
    ("modality", "radiograph"),
    [("CR", ("CR", "DCM")), ("DX", ("DX", "DCM")), ("", ("DX", "DCM"))],
)
def test_a_fusion_engines_inputs_are_coded_by_their_own_modality(
    study: Study, modality: str, radiograph: tuple[str, str]
) -> None:
    # A CR image given to the multimodal engine was coded (DX, "Digital Radiography").
    fusion = manifest_for("hip_multimodal")
    ap = replace(study.ap_source, attributes={"Modality": modality})
    decision = triage(fusion, "R", ap, osteoarthritis=0.9)
    inputs = {"radiograph": True, "ct": False, "text": True}
    decision = replace(decision, prediction=replace(decision.prediction, inputs=inputs))
    sr = make_sr(study, [decision], manifests={fusion.name: fusion})
    group, _ = groups_of(sr)
    assert qualitative(group) == {
        PRESENCE_CONCEPT: PRESENT,
        radiograph: PRESENT,
        ("CT", "DCM"): ABSENT,
        ("121109", "DCM"): PRESENT,
    }


def test_hipnet_group_references_the_lateral(study: Study) -> None:
    sr = make_sr(study, hipnet_case(study))
    groups = groups_of(sr)
    assert [g.tracking_identifier for g in groups] == [
        "hip_screen left hip #1",
        "hipnet left hip #2",
        "study triage",
    ]
    screen, failure, _ = groups
    assert code_of(screen.finding_type) == ("52734007", "SCT")
    assert image_references(screen) == [str(study.ap.SOPInstanceUID)]
    assert code_of(failure.finding_type) == ("240267008", "SCT")
    assert code_of(failure.finding_sites[0].laterality) == LATERALITY["L"]
    assert float(failure.get_measurements()[0].value) == pytest.approx(0.7)
    assert qualitative(failure) == {PRESENCE_CONCEPT: PRESENT}  # FLAG: no urgency
    assert text_items(failure, ALGORITHM_NAME) == ["hipnet"]
    assert text_items(failure, ALGORITHM_PARAMETERS) == [
        "backend=tensorrt",
        "threshold=0.500",
        "views=AP+LATERAL",
        "pji_risk=12.3/100",
    ]
    assert image_references(failure) == [
        str(study.ap.SOPInstanceUID),
        str(study.lateral.SOPInstanceUID),
    ]
    assert sr.SeriesDescription == ("AI triage FLAG: total hip arthroplasty L, aseptic loosening L")


@pytest.mark.parametrize("priority", ["URGENT", "FLAG", "NONE"])
def test_study_triage_group_carries_the_study_priority(study: Study, priority: str) -> None:
    decisions = screen_case(study)
    sr = make_sr(study, decisions, priority=priority)
    last = groups_of(sr)[-1]
    assert last.tracking_identifier == "study triage"
    assert last.finding_type is None
    assert last.get_measurements() == []
    assert qualitative(last) == {PRIORITY_CONCEPT: PRIORITY_CODES[priority]}
    assert image_references(last) == []
    assert sr.SeriesDescription.startswith(f"AI triage {priority}: ")


def test_the_report_states_each_engines_clinical_use(study: Study) -> None:
    # In the SR itself: the osteoporosis engine has no overlay banner to carry it.
    site = replace(HIPNET, clinical_use="site-trained: validate locally")
    sr = make_sr(study, hipnet_case(study), manifests={**MANIFESTS, HIPNET.name: site})
    last = groups_of(sr)[-1]
    assert text_items(last, "121106") == [
        f"hip_screen {SCREEN.version}: {SCREEN.clinical_use}",
        f"hipnet {HIPNET.version}: site-trained: validate locally",
    ]
    assert SCREEN.clinical_use.startswith("not for clinical use")


def test_normal_hips_report_normal_present(study: Study) -> None:
    decisions = [
        triage(SCREEN, side, study.ap_source, normal=0.93 if side == "R" else 0.88)
        for side in ("R", "L")
    ]
    sr = make_sr(study, decisions)
    assert sr.SeriesDescription == "AI triage NONE"
    groups = groups_of(sr)
    assert len(groups) == 3
    for group, side in zip(groups, ("R", "L"), strict=False):
        assert code_of(group.finding_type) == ("17621005", "SCT")
        assert code_of(group.finding_sites[0].laterality) == LATERALITY[side]
        assert qualitative(group) == {PRESENCE_CONCEPT: PRESENT}
    assert qualitative(groups[-1]) == {PRIORITY_CONCEPT: PRIORITY_CODES["NONE"]}


def test_class_without_a_code_is_a_generic_finding_named_by_a_comment(
    study: Study, tmp_path: Path
) -> None:
    uncoded = tuple(
        replace(c, code=None, meaning=None, source="none") if c.name == "polyethylene_wear" else c
        for c in HIPNET.classes
    )
    assert isinstance(uncoded[0], Finding)
    manifest = replace(HIPNET, classes=uncoded)
    decision = triage(manifest, "L", study.ap_source, study.lateral_source, polyethylene_wear=0.8)
    sr = make_sr(study, [decision], manifests={"hipnet": manifest})
    group = groups_of(sr)[0]
    finding = group.finding_type
    assert finding is not None
    assert (finding.value, finding.scheme_designator, finding.meaning) == (
        "121071",
        "DCM",
        "Finding",
    )
    comments = [
        str(item.TextValue)
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]
    assert comments == ["finding: polyethylene wear (no SNOMED CT concept confirmed)"]
    # Standard schemes only: nothing to declare, nothing for dciodvfy to warn about.
    assert "CodingSchemeIdentificationSequence" not in sr
    assert dciodvfy_findings(saved(sr, tmp_path / "sr.dcm")) == []


# --- reading back and independent checkers ----------------------------------------------


@pytest.mark.parametrize("case", [screen_case, hipnet_case])
def test_file_reads_back_with_highdicom(study: Study, case: Any, tmp_path: Path) -> None:
    decisions = case(study)
    built = make_sr(study, decisions)
    path = saved(built, tmp_path / "sr.dcm")
    read = hd.sr.srread(path)
    assert isinstance(read, hd.sr.Comprehensive3DSR)
    assert read.SOPInstanceUID == built.SOPInstanceUID
    assert isinstance(read.content, hd.sr.MeasurementReport)
    original = [(g.tracking_identifier, g.tracking_uid) for g in groups_of(built)]
    again = [
        (g.tracking_identifier, g.tracking_uid) for g in read.content.get_image_measurement_groups()
    ]
    assert again == original
    # Filtering by finding site and finding type works on what was written.
    sites = [code_of(g.finding_sites[0].value) for g in groups_of(built)[:-1]]
    at_joint = read.content.get_image_measurement_groups(
        finding_site=hd.sr.CodedConcept("24136001", "SCT", "Hip joint")
    )
    assert len(at_joint) == sites.count(HIP_JOINT) > 0
    raw = pydicom.dcmread(path)
    assert raw.file_meta.MediaStorageSOPClassUID == COMPREHENSIVE_3D_SR
    assert raw.StudyInstanceUID == study.ap.StudyInstanceUID


def test_tracking_uids_are_stable_across_builds(study: Study) -> None:
    first = [g.tracking_uid for g in groups_of(make_sr(study, screen_case(study)))]
    second = [g.tracking_uid for g in groups_of(make_sr(study, screen_case(study)))]
    # The finding groups' tracking UIDs are derived; the study group's is highdicom's.
    assert first[:-1] == second[:-1]


def test_one_hip_on_two_ap_images_is_tracked_twice(study: Study) -> None:
    # The left hip on the pelvis and on an AP of its own: two groups, two observations, each
    # with its own tracking UID (one UID for two groups would say they are one).
    own = copy.deepcopy(study.ap)
    own.SOPInstanceUID = "1.2.826.0.1.3680043.10.9999.77"
    own.ImageLaterality = "L"
    source = replace(study.ap_source, sop_instance_uid=str(own.SOPInstanceUID), laterality="L")
    decisions = [
        triage(SCREEN, "L", study.ap_source, osteoarthritis=0.8),
        triage(SCREEN, "L", source, osteoarthritis=0.7),
    ]
    headers = {**study.headers, str(own.SOPInstanceUID): own}
    groups = groups_of(make_sr(study, decisions, headers=headers))[:-1]
    assert [image_references(g) for g in groups] == [
        [str(study.ap.SOPInstanceUID)],
        [str(own.SOPInstanceUID)],
    ]
    assert len({g.tracking_uid for g in groups}) == 2


@pytest.mark.parametrize("case", [screen_case, hipnet_case])
def test_dciodvfy_reports_no_errors_or_warnings(study: Study, case: Any, tmp_path: Path) -> None:
    path = saved(make_sr(study, case(study)), tmp_path / "sr.dcm")
    assert dciodvfy_findings(path) == []


@pytest.mark.parametrize(
    ("priority", "code"),
    [("NONE", ("111243", "DCM")), ("FLAG", ("111244", "DCM")), ("URGENT", ("103391001", "SCT"))],
)
def test_a_study_not_analysed_whole_says_so(
    study: Study, tmp_path: Path, priority: str, code: tuple[str, str]
) -> None:
    # "All algorithms succeeded; without findings" over a study whose second AP could not be
    # decoded read as a study found normal.
    lost = ("1.2.826.0.1.3680043.8.498.99", "pixel data cannot be decoded (ValueError: …)")
    sr = make_sr(study, screen_case(study), priority=priority, not_analysed=[lost])
    assert sr.CompletionFlag == "PARTIAL"
    last = groups_of(sr)[-1]
    assert qualitative(last) == {PRIORITY_CONCEPT: code}
    assert text_items(last, "121106")[-1] == (
        "not analysed: SOP instance 1.2.826.0.1.3680043.8.498.99 (pixel data cannot be decoded "
        "(ValueError: …))"
    )
    assert sr.SeriesDescription.startswith(f"AI triage {priority} (incomplete): ")
    # No hip's group says "All algorithms succeeded" in a PARTIAL report either.
    for group in groups_of(sr)[:-1]:
        assert qualitative(group).get(PRIORITY_CONCEPT) in (None, PRIORITY_CODES["URGENT"])
    assert make_sr(study, screen_case(study), priority=priority).CompletionFlag == "COMPLETE"
    assert dciodvfy_findings(saved(sr, tmp_path / "sr.dcm")) == []


def test_dsrdump_reads_a_tid_1500_document(study: Study, tmp_path: Path) -> None:
    if shutil.which("dsrdump") is None:
        pytest.skip("dsrdump (dcmtk) is not installed")
    path = saved(make_sr(study, hipnet_case(study)), tmp_path / "sr.dcm")
    result = run_tool(["dsrdump", "+Pt", "+Pu", str(path)], env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "TID 1500" in result.stdout
    assert "Comprehensive 3D SR" in result.stdout
    assert "Completion Flag     : COMPLETE" in result.stdout
    assert '(240267008,SCT,"Loosening of hip joint prosthesis")' in result.stdout
    assert str(study.lateral.SOPInstanceUID) in result.stdout
    assert "error" not in result.stderr.lower()


# --- refusals -----------------------------------------------------------------------------


def test_no_decisions_is_refused(study: Study) -> None:
    with pytest.raises(ReportError, match="expected at least one triage decision, got none"):
        make_sr(study, [], priority="NONE")


def test_unknown_priority_is_refused(study: Study) -> None:
    with pytest.raises(ReportError, match=r"priority: expected one of .*, got 'HIGH'"):
        make_sr(study, screen_case(study), priority="HIGH")


def test_headers_from_two_studies_are_refused(study: Study) -> None:
    other = copy.deepcopy(study.lateral)
    other.StudyInstanceUID = "1.2.3.4.5"
    headers = {str(study.ap.SOPInstanceUID): study.ap, str(other.SOPInstanceUID): other}
    with pytest.raises(ReportError, match="headers: expected one study, got 2"):
        make_sr(study, screen_case(study), headers=headers)
    with pytest.raises(ReportError, match="headers: expected one study, got 0"):
        make_sr(study, screen_case(study), headers={})


def test_missing_source_header_is_refused(study: Study) -> None:
    headers = {str(study.ap.SOPInstanceUID): study.ap}  # not the lateral Hip-Net used
    with pytest.raises(
        ReportError, match=f"no header for source instance\\(s\\) {study.lateral.SOPInstanceUID}"
    ):
        make_sr(study, hipnet_case(study), headers=headers)


def test_unknown_class_is_refused(study: Study) -> None:
    right, _ = screen_case(study)
    bogus = HipFinding("bogus_class", 0.9, 0.5, present=True, urgent=False)
    decision = TriageDecision(right.prediction, (bogus,), "FLAG")
    with pytest.raises(ReportError, match="hip_screen: no class 'bogus_class' in its manifest"):
        make_sr(study, [decision])


# appended to tests/report/test_sr.py


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientSex", "U"),
        ("PatientSex", "f"),
        ("PatientBirthDate", "1950615"),
        ("PatientBirthDate", "1950-01-01"),
        ("PatientName", "DOE JANE"),
        ("PatientSex", None),
        ("StudyID", None),
    ],
)
def test_an_odd_patient_header_still_gives_a_report_and_quotes_nothing(
    study: Study,
    keyword: str,
    value: str | None,
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
) -> None:
    # One odd value (PatientSex U, a malformed birth date, a missing Type 2 attribute) must
    # not fail the study's report, and nothing may quote it (it is patient data).
    caplog.set_level(logging.DEBUG)
    headers = {uid: copy.deepcopy(h) for uid, h in study.headers.items()}
    for header in headers.values():
        if value is None:
            if keyword in header:
                del header[keyword]
        else:
            setattr(header, keyword, value)
    caplog.clear()  # setting a malformed value above made pydicom report it: the test's own doing
    recwarn.clear()
    sr = make_sr(study, screen_case(study), headers=headers)
    shown = str(sr.get(keyword, ""))
    if keyword == "PatientSex":
        assert shown in ("", "F")  # F for "f"; U is not a PatientSex value: left empty
    if keyword == "PatientBirthDate":
        assert shown == ""
    for text in (caplog.text, *(str(w.message) for w in recwarn)):
        assert "1950" not in text and "DOE" not in text


def test_a_korean_character_set_is_written_as_utf_8(study: Study, tmp_path: Path) -> None:
    headers = {uid: copy.deepcopy(ds) for uid, ds in study.headers.items()}
    for ds in headers.values():
        ds.SpecificCharacterSet = "ISO 2022 IR 149"  # PS3.5 Annex I; highdicom refuses it
        ds.PatientName = "Hong^Gildong"
    sr = make_sr(study, screen_case(study), headers=headers)  # was: ReportError, study failed
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    path = saved(sr, tmp_path / "sr.dcm")
    assert str(pydicom.dcmread(path).PatientName) == "Hong^Gildong"
    assert dciodvfy_findings(path) == []


@pytest.mark.parametrize(
    ("charset", "institution", "clinical_use", "written"),
    [
        # No Specific Character Set allows ASCII only: was an invalid object (0xf4).
        (None, "Hôpital Saint-Éloi", None, "ISO_IR 192"),
        # Was a TEXT item dsrdump could not parse.
        (None, "Phantom Hospital", "Forschungsmodell, nicht für die Klinik", "ISO_IR 192"),
        # Latin-1 cannot write Ł or ź: was 'Szpital ?ód?'.
        ("ISO_IR 100", "Szpital Łódź", None, "ISO_IR 192"),
        ("ISO_IR 100", "Hôpital Saint-Éloi", None, "ISO_IR 100"),  # it can write these
        (None, "Phantom Hospital", None, None),
    ],
)
def test_the_nodes_own_text_gets_a_character_set_that_can_write_it(
    study: Study, tmp_path: Path, charset: str | None, institution: str,
    clinical_use: str | None, written: str | None,
) -> None:  # fmt: skip
    headers = {uid: copy.deepcopy(ds) for uid, ds in study.headers.items()}
    for ds in headers.values():
        if charset is not None:
            ds.SpecificCharacterSet = charset
            # As read from a file: the name's raw bytes in the source's own set.
            name = "Müller^Jörg".encode("latin_1")
            ds[0x00100010] = RawDataElement(Tag(0x00100010), "PN", len(name), name, 0, False, True)
    manifests = dict(MANIFESTS)
    if clinical_use is not None:
        manifests[SCREEN.name] = replace(SCREEN, clinical_use=clinical_use)
    sr = make_sr(study, screen_case(study), headers=headers, manifests=manifests,
                 institution_name=institution)  # fmt: skip
    assert sr.get("SpecificCharacterSet") == written
    path = saved(sr, tmp_path / "sr.dcm")
    back = pydicom.dcmread(path)
    assert back.InstitutionName == institution
    if charset is not None:
        assert str(back.PatientName) == "Müller^Jörg"
    assert dciodvfy_findings(path) == []
    if clinical_use is not None and shutil.which("dsrdump") is not None:
        result = run_tool(["dsrdump", "+Pt", str(path)], env=dict(os.environ))
        assert result.returncode == 0, result.stderr


def test_a_report_supersedes_the_studys_earlier_ones(study: Study, tmp_path: Path) -> None:
    earlier = make_sr(study, screen_case(study))
    again = make_sr(study, screen_case(study))  # the same report rebuilt: not its own
    assert supersede(again, [earlier]).InstanceNumber == 1
    assert "PredecessorDocumentsSequence" not in again
    newer = make_sr(study, hipnet_case(study))
    second = copy.deepcopy(earlier)
    second.SOPInstanceUID, second.InstanceNumber = "1.2.826.0.1.3680043.8.498.5", 2
    supersede(newer, [second, earlier])
    assert newer.InstanceNumber == 3
    [item] = newer.PredecessorDocumentsSequence
    assert item.StudyInstanceUID == earlier.StudyInstanceUID
    [series] = item.ReferencedSeriesSequence
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence] == [
        earlier.SOPInstanceUID,  # by Instance Number
        "1.2.826.0.1.3680043.8.498.5",
    ]
    assert dciodvfy_findings(saved(newer, tmp_path / "sr.dcm")) == []
    other = copy.deepcopy(earlier)
    other.SOPInstanceUID, other.StudyInstanceUID = "1.2.3.4", "1.2.3"
    with pytest.raises(ReportError, match=r"previous report 1\.2\.3\.4 is of study 1\.2\.3, not "):
        supersede(newer, [other])


def _predecessors(sr: pydicom.Dataset) -> list[str]:
    return [
        str(i.ReferencedSOPInstanceUID)
        for study in sr.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    ]


def test_the_latest_report_rebuilt_is_the_same_object(study: Study) -> None:
    first = as_latest_report(make_sr(study, screen_case(study)), [])
    again = as_latest_report(make_sr(study, screen_case(study)), [first])
    assert (again.SOPInstanceUID, again.InstanceNumber) == (first.SOPInstanceUID, 1)
    assert again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID
    newer = as_latest_report(make_sr(study, hipnet_case(study)), [first])
    assert newer.SOPInstanceUID != first.SOPInstanceUID and newer.InstanceNumber == 2
    assert _predecessors(newer) == [first.SOPInstanceUID]


def test_content_returning_to_a_superseded_reports_is_a_new_report(study: Study) -> None:
    a = as_latest_report(make_sr(study, screen_case(study)), [])
    b = as_latest_report(make_sr(study, hipnet_case(study)), [a])
    # A's content again (a correction undone): was A's UID, InstanceNumber 2 and B as its
    # predecessor, a UID the PACS held already, so the outbox sent nothing and the PACS's
    # latest report stayed B.
    back = as_latest_report(make_sr(study, screen_case(study)), [a, b])
    assert back.SOPInstanceUID not in (a.SOPInstanceUID, b.SOPInstanceUID)
    assert back.InstanceNumber == 3
    assert _predecessors(back) == [a.SOPInstanceUID, b.SOPInstanceUID]
    # Rebuilt as it is (a crash before its outcome was recorded, or a rerun finding the
    # same once it was delivered): the same object, number and predecessors.
    for previous in ([a, b], [a, b, back]):
        rebuilt = as_latest_report(make_sr(study, screen_case(study)), previous)
        assert (rebuilt.SOPInstanceUID, rebuilt.InstanceNumber) == (back.SOPInstanceUID, 3)
        assert _predecessors(rebuilt) == [a.SOPInstanceUID, b.SOPInstanceUID]
    # B's row gone (a dead letter discarded): still the same object, as delivered (was: a
    # new UID numbered 3 again, a duplicate report in the PACS).
    rebuilt = as_latest_report(make_sr(study, screen_case(study)), [a, back])
    assert (rebuilt.SOPInstanceUID, rebuilt.InstanceNumber) == (back.SOPInstanceUID, 3)
    assert _predecessors(rebuilt) == [a.SOPInstanceUID, b.SOPInstanceUID]
    # The latest of another writer, without an Instance Number: still the same object.
    unnumbered = copy.deepcopy(back)
    del unnumbered.InstanceNumber
    rebuilt = as_latest_report(make_sr(study, screen_case(study)), [a, b, unnumbered])
    assert rebuilt.SOPInstanceUID == back.SOPInstanceUID
    # B's content again after that: new once more.
    b_again = as_latest_report(make_sr(study, hipnet_case(study)), [a, b, back])
    assert b_again.SOPInstanceUID not in (a.SOPInstanceUID, b.SOPInstanceUID, back.SOPInstanceUID)
    assert b_again.InstanceNumber == 4


def test_a_report_built_once_its_predecessors_are_forgotten_is_another_object(
    study: Study,
) -> None:
    a = as_latest_report(make_sr(study, screen_case(study)), [])
    b = as_latest_report(make_sr(study, hipnet_case(study)), [a])
    assert (b.InstanceNumber, _predecessors(b)) == (2, [a.SOPInstanceUID])
    # The study purged, then re-sent: B's content with no earlier report known. Was B's UID,
    # numbered 1 without predecessors: other content under a UID the PACS held.
    fresh = as_latest_report(make_sr(study, hipnet_case(study)), [])
    assert fresh.SOPInstanceUID not in (a.SOPInstanceUID, b.SOPInstanceUID)
    assert (fresh.InstanceNumber, _predecessors(fresh)) == (1, [])


def test_a_report_is_numbered_after_the_highest_of_those_it_replaces(study: Study) -> None:
    a = as_latest_report(make_sr(study, screen_case(study)), [])
    b = as_latest_report(make_sr(study, hipnet_case(study)), [a])
    # A's row gone (a dead letter discarded): was numbered 2 again beside B's 2.
    c = as_latest_report(make_sr(study, screen_case(study)), [b])
    assert c.SOPInstanceUID not in (a.SOPInstanceUID, b.SOPInstanceUID)
    assert (c.InstanceNumber, _predecessors(c)) == (3, [b.SOPInstanceUID])


@pytest.mark.parametrize(
    ("engine", "finding", "site"),
    [("hip_screen", "intertrochanteric_fracture", ("29836001", "SCT")),
     ("hip_screen", "metallic_internal_fixation", ("29836001", "SCT")),
     ("hip_screen", "osteoarthritis", ("24136001", "SCT")),
     ("hipnet", "periprosthetic_fracture", ("71341001", "SCT")),
     ("hipnet", "dislocation", ("24136001", "SCT")),
     ("osteoporosis", "osteoporosis", ("29836001", "SCT"))],
)  # fmt: skip
def test_each_finding_is_sited_where_it_is(
    study: Study, engine: str, finding: str, site: tuple[str, str]
) -> None:
    # Every finding was at "Hip joint": an intertrochanteric fracture is outside its
    # capsule, a periprosthetic fracture in the femoral shaft, osteoporosis in the bone.
    manifest = manifest_for(engine)
    hip = triage(manifest, "R", study.ap_source, **{finding: 0.99})
    sr = make_sr(study, [hip], manifests={engine: manifest})
    [group, _] = groups_of(sr)
    assert code_of(group.finding_sites[0].value) == site
