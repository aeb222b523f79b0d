"""The study's result objects from its analysis: one patient and study in all of them."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from helpers import FORCE_FINDINGS, pipeline_config
from pydicom.dataset import Dataset

from dicom_node.analyse import StudyAnalysis, analyse_study, read_sources
from dicom_node.infer import EngineSet
from dicom_node.results import ResultSet, build_results, summary
from engines.phantoms.studies import write_study

DUAL = {"name": "dual", "engine": "hipnet", "when": {"Modality": ["DX"], "ViewPosition": ["AP"]}}


def analysed(
    tmp_path: Path,
    engine_cache: Path,
    study_uid: str,
    files: Sequence[Path],
    rules: Sequence[dict[str, Any]] = (DUAL,),
    cascade: Sequence[dict[str, str]] = (),
) -> tuple[StudyAnalysis, ResultSet]:
    """The study's analysis and results with the test engines (files in arrival order)."""
    cfg = pipeline_config(
        tmp_path / "spool", engine_cache, triage=FORCE_FINDINGS,
        routing={"rules": list(rules), "cascade": list(cascade)},
    )  # fmt: skip
    engines = EngineSet(cfg.engines, sorted({rule["engine"] for rule in rules}))
    try:
        analysis = analyse_study(
            study_uid, read_sources([(path, "PACS") for path in files]), engines, cfg
        )
        return analysis, build_results(analysis, engines, cfg)
    finally:
        engines.close()


def test_every_result_carries_the_patient_and_study_of_the_image_received_last(
    tmp_path: Path, engine_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A name and an accession corrected in the PACS for the lateral only: the SR took the
    # first header by UID, each overlay its own image's, and one study's results named
    # two patients' names and two accessions.
    study = write_study(
        tmp_path, 12, "normal", "total_hip_arthroplasty", failure={"L": "dislocation"}, size=64
    )
    _, lateral = study.files  # the pelvis, then the lateral
    corrected = pydicom.dcmread(lateral)
    corrected.PatientName = "CORRECTED^NAME"
    corrected.AccessionNumber = "ACC-NEW"
    corrected.save_as(lateral, enforce_file_format=True)
    with caplog.at_level(logging.WARNING, logger="dicom_node.results"):
        # The lateral last.
        _, results = analysed(tmp_path, engine_cache, study.identity.study_uid, study.files)
    assert results.overlays  # the AP's, built from the pelvis image
    for result in (results.sr, *results.overlays):
        assert (str(result.PatientName), result.AccessionNumber) == ("CORRECTED^NAME", "ACC-NEW")
    assert (
        f"images disagree on PatientName, AccessionNumber; every result carries those of SOP "
        f"instance {corrected.SOPInstanceUID}, received last" in caplog.text
    )
    assert "CORRECTED" not in caplog.text  # which attributes, never their values


def edited_tha_study(
    tmp_path: Path, seed: int, which: int, **values: str
) -> tuple[Any, pydicom.Dataset]:
    """A pelvis with a dislocated left THA and its lateral (in that order), file ``which``
    given ``values``; the study and that file's header before the edit."""
    study = write_study(
        tmp_path, seed, "normal", "total_hip_arthroplasty", failure={"L": "dislocation"}, size=64
    )
    path = study.files[which]
    before = pydicom.dcmread(path)
    edited = copy.deepcopy(before)
    for keyword, value in values.items():
        setattr(edited, keyword, value)
    edited.save_as(path, enforce_file_format=True)
    return study, before


def test_an_image_without_a_patient_id_received_last_does_not_take_the_id_away(
    tmp_path: Path, engine_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every result carried the empty Patient ID of the image received last.
    study, lateral = edited_tha_study(tmp_path, 13, 1, PatientID="")
    patient_id = lateral.PatientID
    with caplog.at_level(logging.WARNING, logger="dicom_node.results"):
        _, results = analysed(tmp_path, engine_cache, study.identity.study_uid, study.files)
    assert results.overlays
    for result in (results.sr, *results.overlays):
        assert result.PatientID == patient_id
    # The log names the image the results follow, and why (was: "received last").
    assert "received last with a Patient ID" in caplog.text


@pytest.mark.parametrize("issuing", ["pelvis", "lateral"])
def test_the_issuer_the_study_gives_its_patient_id_goes_with_the_results(
    tmp_path: Path, engine_cache: Path, caplog: pytest.LogCaptureFixture, issuing: str
) -> None:
    # The same ID with an issuer on one image only is one patient (analyse merges them):
    # the results took the image without it, and went out under the ID alone. The image
    # received last has no issuer: the lateral, or the pelvis (the overlays' own image:
    # they went out without the issuer the SR carried).
    which = 0 if issuing == "pelvis" else 1
    study, _ = edited_tha_study(tmp_path, 14, which, IssuerOfPatientID="HOSPITAL-A")
    files = study.files if issuing == "pelvis" else study.files[::-1]
    with caplog.at_level(logging.WARNING, logger="dicom_node.results"):
        _, results = analysed(tmp_path, engine_cache, study.identity.study_uid, files)
    assert results.overlays
    for result in (results.sr, *results.overlays):
        assert result.IssuerOfPatientID == "HOSPITAL-A"
    assert "(with the Issuer of Patient ID its other images give)" in caplog.text


def test_a_hipnet_overlay_says_its_map_is_of_the_ap_branch(
    tmp_path: Path, engine_cache: Path
) -> None:
    # Hip-Net's maps are its members' AP-branch maps; its probabilities fuse the lateral's
    # logits too. The overlay read "class activation map of the reported finding", though
    # the lateral can change the finding and the map stays the same.
    study = write_study(
        tmp_path, 13, "normal", "total_hip_arthroplasty", failure={"L": "dislocation"}, size=64
    )
    _, results = analysed(tmp_path, engine_cache, study.identity.study_uid, study.files)
    [overlay] = results.overlays
    assert overlay.DerivationDescription.startswith(
        "hipnet 0.0.1-test: class activation map of its AP branch's classifier for the "
        "reported finding per hip (the reported result fuses other inputs too)"
    )


def test_a_rerun_overlay_is_numbered_after_the_earlier_ones_of_its_series(
    tmp_path: Path, engine_cache: Path
) -> None:
    study = write_study(
        tmp_path, 13, "normal", "total_hip_arthroplasty", failure={"L": "dislocation"}, size=64
    )
    cfg = pipeline_config(tmp_path / "spool", engine_cache, triage=FORCE_FINDINGS,
                          routing={"rules": [DUAL], "cascade": []})  # fmt: skip
    engines = EngineSet(cfg.engines, ["hipnet"])
    try:
        sources = read_sources([(path, "PACS") for path in study.files])
        analysis = analyse_study(study.identity.study_uid, sources, engines, cfg)
        [first] = build_results(analysis, engines, cfg).overlays
        assert first.InstanceNumber == 1
        # An earlier job's different overlay of the same image in the series (a rerun
        # after a lateral arrived, new thresholds): was numbered 1 beside it.
        other = copy.deepcopy(first)
        other.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
        [after] = build_results(analysis, engines, cfg, [other]).overlays
        assert (after.SOPInstanceUID, after.InstanceNumber) == (first.SOPInstanceUID, 2)
        third = copy.deepcopy(other)
        third.SOPInstanceUID, third.InstanceNumber = "1.2.826.0.1.3680043.8.498.98", 3
        [later] = build_results(analysis, engines, cfg, [other, third]).overlays
        assert later.InstanceNumber == 4
        # Rebuilt the same (a crash, a rerun finding the same): the number it was sent with.
        delivered = copy.deepcopy(first)
        delivered.InstanceNumber = 2
        [again] = build_results(analysis, engines, cfg, [other, delivered]).overlays
        assert (again.SOPInstanceUID, again.InstanceNumber) == (first.SOPInstanceUID, 2)
        # Content back to an older overlay's, superseded since: was that UID and number 1
        # below the superseding 2, so a viewer took the superseded one for current.
        older = copy.deepcopy(first)
        superseding = copy.deepcopy(other)
        superseding.InstanceNumber = 2
        [back] = build_results(analysis, engines, cfg, [older, superseding]).overlays
        assert back.SOPInstanceUID not in (first.SOPInstanceUID, other.SOPInstanceUID)
        assert back.InstanceNumber == 3
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
        # The same again (rebuilt as the latest): the same object.
        [rebuilt] = build_results(analysis, engines, cfg, [older, superseding, back]).overlays
        assert (rebuilt.SOPInstanceUID, rebuilt.InstanceNumber) == (back.SOPInstanceUID, 3)
        # Overlays delivered before reruns were numbered, each 1: none is known to be the
        # latest, so content equal to one of them is a new object after them (was: whichever
        # sorted last by file name taken for the latest, and kept at 1).
        for uid in ("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.999"):
            unnumbered = copy.deepcopy(other)
            unnumbered.SOPInstanceUID, unnumbered.InstanceNumber = uid, 1
            [newer] = build_results(analysis, engines, cfg, [older, unnumbered]).overlays
            assert newer.SOPInstanceUID not in (first.SOPInstanceUID, uid)
            assert newer.InstanceNumber == 2
    finally:
        engines.close()


def texts(item: Dataset) -> Iterator[str]:
    """Every TEXT value under ``item``'s content tree."""
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            yield str(child.TextValue)
        yield from texts(child)


def test_an_engine_an_unusable_header_value_held_back_is_named_in_the_report(
    tmp_path: Path, engine_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A rule requiring the sex, and a Patient's Sex of U: the engine was left out of the SR
    # as silently as for a sex never sent, though the docs promised a Comment naming it.
    study = write_study(tmp_path, 14, "normal", "osteoarthritis", size=64)
    [pelvis] = study.files
    ds = pydicom.dcmread(pelvis)
    ds.PatientSex = "U"
    ds.save_as(pelvis, enforce_file_format=True)
    rules = [{**DUAL, "name": "screen", "engine": "hip_screen"},
             {**DUAL, "name": "needs-sex", "requires": ["sex"]}]  # fmt: skip
    uid = study.identity.study_uid
    with caplog.at_level(logging.WARNING, logger="dicom_node.analyse"):
        analysis, results = analysed(tmp_path, engine_cache, uid, [pelvis], rules)
    note = (
        f"not run: hipnet on SOP instance {ds.SOPInstanceUID} (rule 'needs-sex' requires sex; "
        "sex: in the header, but not M, F or O)"
    )
    assert {h.decision.prediction.task.engine for h in analysis.hips} == {"hip_screen"}
    assert note in list(texts(results.sr))
    assert json.loads(summary(analysis))["held_back"] == [note]
    assert note in caplog.text
    # The cascade runs hipnet on that image (a THA found): not "not run" beside its results.
    cascade = [{"after": "hip_screen", "finding": "total_hip_arthroplasty", "engine": "hipnet"}]
    analysis, _ = analysed(tmp_path, engine_cache, uid, [pelvis], rules, cascade)
    assert "hipnet" in {h.decision.prediction.task.engine for h in analysis.hips}
    assert analysis.held_back == ()
