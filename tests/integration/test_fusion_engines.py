"""The fusion engines through a running node: DX + CT + request text to the multimodal
engine, DX + demographics to the osteoporosis engine, and what the reports say.

Studies go in over DICOM (pynetdicom client), results come out to a folder
destination; every result object is checked with dciodvfy. The engines are the
untrained test packages (mechanics, not accuracy).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from dicom_clients import send_files
from helpers import dciodvfy_findings, pipeline_config
from orthanc import wait_for
from pydicom.dataset import Dataset

from dicom_node.node import Node
from dicom_node.synthetic import write
from engines.phantoms.clinical import ClinicalPhantom, multimodal_case, osteoporosis_case
from engines.phantoms.ct import ct_hip, write_ct_study_series
from engines.phantoms.studies import PhantomStudy, write_study

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
AP_RULE_WHEN = {"Modality": ["DX", "CR"], "ViewPosition": ["AP", "PA"]}
RULES = [
    {"name": "with-ct", "engine": "hip_multimodal", "when": AP_RULE_WHEN, "requires": ["ct"]},
    # A study with request text but no CT also goes to the multimodal engine (CT masked).
    {"name": "with-text", "engine": "hip_multimodal", "when": AP_RULE_WHEN, "requires": ["text"]},
    {"name": "bone", "engine": "osteoporosis", "when": AP_RULE_WHEN, "requires": ["age", "sex"]},
]


def stamp(study: PhantomStudy, case: ClinicalPhantom) -> None:
    for path in study.files:
        write(case.stamp(pydicom.dcmread(path)), path)


def items(content: Any) -> Iterator[Dataset]:
    for item in content:
        yield item
        yield from items(item.get("ContentSequence", []))


def groups(sr: Dataset) -> list[dict[str, Any]]:
    """Per measurement group: the algorithm, the input evaluations, the NUMs and TEXTs."""
    out = []
    for group in items(sr.ContentSequence):
        name = group.ConceptNameCodeSequence[0].CodeMeaning
        if group.ValueType != "CONTAINER" or name != "Measurement Group":
            continue
        found: dict[str, Any] = {"codes": {}, "nums": {}, "texts": {}}
        for item in items(group.ContentSequence):
            meaning = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "CODE":
                found["codes"][meaning] = item.ConceptCodeSequence[0].CodeMeaning
            elif item.ValueType == "NUM":
                found["nums"][meaning] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "TEXT":
                found["texts"].setdefault(meaning, []).append(str(item.TextValue))
        found["engine"] = found["texts"].get("Algorithm Name", [None])[0]
        out.append(found)
    return out


def reliance(group: dict[str, Any]) -> dict[str, float]:
    """The attention weights the group's Comment states, by input."""
    (text,) = [
        t for t in group["texts"]["Comment"] if t.startswith("attention weights over the inputs")
    ]
    return {m: float(w) for m, w in re.findall(r"(radiograph|CT|clinical text) ([0-9.]+)", text)}


def results_of(out: Path, study_uid: str, count: int) -> list[Dataset]:
    folder = out / study_uid
    files = wait_for(
        lambda: (sorted(folder.glob("*.dcm")) if len(list(folder.glob("*.dcm"))) >= count
                 else None),
        120,
        f"{count} result objects of study {study_uid}",
    )  # fmt: skip
    for path in files:
        assert dciodvfy_findings(path) == [], path.name
    return [pydicom.dcmread(p) for p in files]


@pytest.fixture
def fusion_node(tmp_path: Path, fusion_cache: Path) -> Iterator[Node]:
    (tmp_path / "out").mkdir()
    cfg = pipeline_config(
        tmp_path / "spool", fusion_cache,
        routing={"rules": RULES, "cascade": []},
        destinations=[{"name": "files", "type": "folder", "path": str(tmp_path / "out")}],
    )  # fmt: skip
    node = Node(cfg)
    node.start()
    yield node
    node.stop(drain_seconds=1)


def test_dx_ct_and_text_give_a_multimodal_sr_and_demographics_an_osteoporosis_sr(
    fusion_node: Node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    # A: DX pelvis + CT series + request text (and demographics).
    full = write_study(tmp_path / "a", 611, "osteoarthritis", "normal", size=64)
    text_case = multimodal_case("femoroacetabular_impingement", 3)
    assert text_case.texts, "seed 3 has a request text"
    stamp(full, text_case)
    ct = write_ct_study_series(tmp_path / "a", ct_hip("osteoarthritis", 611), full.identity)
    # B: DX + request text, no CT: the multimodal engine runs with its CT input masked.
    no_ct = write_study(tmp_path / "b", 612, "normal", "normal", size=64)
    stamp(no_ct, text_case)
    # C: DX + age/sex/size/weight only: the osteoporosis engine alone.
    bone_case = osteoporosis_case("osteoporosis", 4)
    bone = write_study(tmp_path / "c", 613, "normal", "normal", size=64)
    stamp(bone, dataclasses.replace(bone_case, texts={}, age_years=bone_case.age_years or 74,
                                    sex=bone_case.sex or "F"))  # fmt: skip
    assert send_files(fusion_node.port, [*full.files, *ct]) == [0] * (len(full.files) + len(ct))
    assert send_files(fusion_node.port, list(no_ct.files)) == [0]
    assert send_files(fusion_node.port, list(bone.files)) == [0]
    # D: as C, but sex O, which no training case of the engine had: read as missing.
    other = write_study(tmp_path / "d", 614, "normal", "normal", size=64)
    stamp(other, dataclasses.replace(bone_case, texts={}, age_years=bone_case.age_years or 74,
                                     sex="O"))  # fmt: skip
    assert send_files(fusion_node.port, list(other.files)) == [0]

    # A: one SR (both engines' groups) and the multimodal engine's Grad-CAM overlay.
    a = results_of(out, full.identity.study_uid, 2)
    (sr,) = [ds for ds in a if ds.SOPClassUID == SR_CLASS]
    assert len(a) == 2, "an SR and one overlay (the osteoporosis engine has no heat map)"
    multimodal = [g for g in groups(sr) if g["engine"] == "hip_multimodal"]
    assert len(multimodal) == 2, "the multimodal engine reported both hips of the pelvis"
    # The CT is of the right hip (Laterality R): the right hip went by the CT rule and used
    # it; the left hip, for which the CT rule holds back, by the text rule, its CT masked.
    with_ct = [g for g in multimodal if g["codes"]["Computed Tomography"] == "Present"]
    without_ct = [g for g in multimodal if g["codes"]["Computed Tomography"] == "Absent"]
    assert len(with_ct) == len(without_ct) == 1
    for g in multimodal:
        assert g["codes"]["Digital Radiography"] == "Present"
        assert g["codes"]["Indications for Procedure"] == "Present"
        weights = reliance(g)
        assert set(weights) == {"radiograph", "CT", "clinical text"}
        assert all(w > 0 for w in weights.values()) == (g in with_ct)
        assert sum(weights.values()) == pytest.approx(1.0, abs=0.02)
        if g["codes"]["Finding"] == "Finding":  # FAI: no SNOMED CT concept, named in words
            assert any("femoroacetabular" in t for t in g["texts"]["Comment"])
    assert reliance(without_ct[0])["CT"] == 0.0
    osteoporosis = [g for g in groups(sr) if g["engine"] == "osteoporosis"]
    assert osteoporosis and all(g["codes"]["Subject Age"] == "Present" for g in osteoporosis)
    assert "CodingSchemeIdentificationSequence" not in sr  # standard schemes only
    (overlay,) = [ds for ds in a if ds.SOPClassUID != SR_CLASS]
    assert "hip_multimodal" in str(overlay.SeriesDescription) + str(overlay.DerivationDescription)
    # The map is the radiograph branch's, not the fused result's: the overlay says so.
    assert "map of its radiograph branch's classifier" in overlay.DerivationDescription
    state = fusion_node.state
    assert state is not None
    (job,) = [j for j in state.jobs() if j.study_uid == full.identity.study_uid]
    hips = json.loads(job.summary or "{}")["hips"]
    attention = [h["attention"] for h in hips if h["engine"] == "hip_multimodal"]
    assert attention and all(sum(a.values()) == pytest.approx(1.0, abs=1e-3) for a in attention)
    ct_used = {h["side"]: h["inputs"]["ct"] for h in hips if h["engine"] == "hip_multimodal"}
    assert ct_used == {"R": True, "L": False}

    # B: the CT is reported missing and the engine gave it no weight.
    b = results_of(out, no_ct.identity.study_uid, 2)
    (sr,) = [ds for ds in b if ds.SOPClassUID == SR_CLASS]
    multimodal = [g for g in groups(sr) if g["engine"] == "hip_multimodal"]
    assert multimodal
    for g in multimodal:
        assert g["codes"]["Computed Tomography"] == "Absent"
        assert g["codes"]["Indications for Procedure"] == "Present"
        assert reliance(g)["CT"] == 0.0
        assert any("CT 0.00 (missing)" in t for t in g["texts"]["Comment"])

    # C: the osteoporosis SR only: its inputs and its feature-importance summary.
    (sr,) = results_of(out, bone.identity.study_uid, 1)
    found = groups(sr)
    assert {g["engine"] for g in found} == {"osteoporosis", None}  # None: the study group
    bone_groups = [g for g in found if g["engine"] == "osteoporosis"]
    assert {g["codes"]["Finding Site"] for g in bone_groups} == {
        "Hip"
    }  # osteoporosis: the hip region, not its joint
    for g in bone_groups:
        assert g["codes"]["Subject Sex"] == "Present"
        (importance,) = g["texts"]["Comment"]
        assert importance.startswith("permutation importance (drop of ROC AUC, held-out")
        assert "age 0.121, image 0.080, bmi 0.011" in importance
    # D: the SR says sex was not used and why; the importance summary follows.
    (sr,) = results_of(out, other.identity.study_uid, 1)
    for g in [g for g in groups(sr) if g["engine"] == "osteoporosis"]:
        assert g["codes"]["Subject Sex"] == "Absent" and g["codes"]["Subject Age"] == "Present"
        note, importance = g["texts"]["Comment"]
        assert note == (
            "not used: sex (a value no training case of this engine had, or outside the range "
            "its training covered; read as missing)"
        )
        assert importance.startswith("permutation importance")
    assert {j.state for j in state.jobs()} == {"done"}

    # The request text stayed inside the node: no log line carries it.
    for phrase in text_case.texts.values():
        assert not any(phrase in record.getMessage() for record in caplog.records), phrase


def test_a_ct_that_arrives_after_the_radiographs_gives_a_new_sr_that_is_sent(
    fusion_node: Node, tmp_path: Path
) -> None:
    # The radiograph and request text complete a study; its CT comes later and reopens
    # it. The rerun's SR says the CT was used, so it is a new object (its UID follows its
    # content) and reaches the destination; the first SR stays as it was sent.
    out = tmp_path / "out"
    study = write_study(tmp_path / "late", 614, "osteoarthritis", "normal", size=64)
    stamp(study, multimodal_case("femoroacetabular_impingement", 3))
    assert send_files(fusion_node.port, list(study.files)) == [0]
    first = results_of(out, study.identity.study_uid, 2)
    (first_sr,) = [ds for ds in first if ds.SOPClassUID == SR_CLASS]
    assert {
        g["codes"]["Computed Tomography"]
        for g in groups(first_sr)
        if g["engine"] == "hip_multimodal"
    } == {"Absent"}

    ct = write_ct_study_series(tmp_path / "late", ct_hip("osteoarthritis", 614), study.identity)
    assert send_files(fusion_node.port, ct) == [0] * len(ct)
    files = results_of(out, study.identity.study_uid, 3)
    srs = [ds for ds in files if ds.SOPClassUID == SR_CLASS]
    assert len(srs) == 2
    (second_sr,) = [ds for ds in srs if ds.SOPInstanceUID != first_sr.SOPInstanceUID]
    present = {
        g["codes"]["Computed Tomography"]
        for g in groups(second_sr)
        if g["engine"] == "hip_multimodal"
    }
    assert present == {"Present", "Absent"}  # the right hip used its CT, the left none
    # The CT it fused is evidence of the report, with the radiograph.
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for study_item in second_sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    ct_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct}
    assert ct_uids <= evidence and len(evidence) == len(ct_uids) + 1
    # The overlay shows the radiograph branch's map, unchanged, but its banner gives the
    # rerun's fused probability (whole since the banner wraps its lines): a new object, in
    # the same series.
    files = results_of(out, study.identity.study_uid, 4)
    overlays = [ds for ds in files if ds.SOPClassUID != SR_CLASS]
    assert len(overlays) == 2 and len({ds.SeriesInstanceUID for ds in overlays}) == 1
    old, new = (ds.pixel_array for ds in overlays)
    assert np.array_equal(old[-64:], new[-64:])  # the picture and its map
    assert not np.array_equal(old[:-64], new[:-64])  # the banner
