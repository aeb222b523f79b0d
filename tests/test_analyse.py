"""A study through the engines: what happens to a view that cannot be read."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from helpers import SCREEN_RULE, pipeline_config

from dicom_node import analyse as analyse_module
from dicom_node.analyse import MixedPatientsError, StudyAnalysis, analyse_study, read_sources
from dicom_node.errors import describe
from dicom_node.infer import EngineOutputError, EngineSet
from dicom_node.models import Prediction
from dicom_node.preprocess import PreprocessError
from dicom_node.report.sr import reported_findings
from dicom_node.results import summary
from dicom_node.triage import probability_text
from engines.phantoms.studies import write_study
from engines.runtimes.base import EngineRuntimeError

THA = "total_hip_arthroplasty"
DUAL = {"name": "dual", "engine": "hipnet", "when": {"Modality": ["DX"], "ViewPosition": ["AP"]}}


def test_a_lateral_that_cannot_be_decoded_is_a_missing_view(
    tmp_path: Path, engine_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The AP's triage must not be lost to a broken lateral: Hip-Net runs on the AP alone,
    # and the hip's task says so (the SR then reads views=AP).
    study = write_study(
        tmp_path, 9, "normal", "total_hip_arthroplasty", failure={"L": "dislocation"}, size=64
    )
    pelvis, lateral = study.files
    ds = pydicom.dcmread(lateral)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(lateral, enforce_file_format=True)
    cfg = pipeline_config(
        tmp_path / "spool", engine_cache, routing={"rules": [DUAL], "cascade": []}
    )
    engines = EngineSet(cfg.engines, ["hipnet"])
    try:
        with caplog.at_level(logging.WARNING, logger="dicom_node.analyse"):
            analysis = analyse_study(
                study.identity.study_uid, read_sources([(pelvis, "PACS"), (lateral, "PACS")]),
                engines, cfg,
            )  # fmt: skip
    finally:
        engines.close()
    tasks = {h.decision.prediction.task.side: h.decision.prediction.task for h in analysis.hips}
    assert set(tasks) == {"R", "L"}
    assert tasks["L"].lateral is None  # dropped, not failed
    assert analysis.hips[1].decision.prediction.inputs.get("lateral", False) is False
    assert f"L hip: lateral SOP instance {ds.SOPInstanceUID} not used: pixel data" in caplog.text
    # The report names it: a lateral sent and left out is not "all algorithms succeeded".
    ((uid, why),) = analysis.not_analysed
    assert uid == ds.SOPInstanceUID and "pixel data" in why


def test_an_unreadable_retake_leaves_the_earlier_lateral_to_be_used(
    tmp_path: Path, engine_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The lateral received last is the hip's partner; when it cannot be read, the study's
    # earlier lateral of that hip was not tried and the hip went on AP alone.
    study = write_study(
        tmp_path, 10, "normal", "total_hip_arthroplasty", failure={"L": "dislocation"}, size=64
    )
    pelvis, earlier = study.files
    retake = pydicom.dcmread(earlier)
    retake.SOPInstanceUID = pydicom.uid.generate_uid()
    retake.PixelData = retake.PixelData[: len(retake.PixelData) // 2]
    broken = tmp_path / "retake.dcm"
    retake.save_as(broken, enforce_file_format=True)
    cfg = pipeline_config(
        tmp_path / "spool", engine_cache, routing={"rules": [DUAL], "cascade": []}
    )
    sources = [(pelvis, "PACS"), (earlier, "PACS"), (broken, "PACS")]  # the retake last
    engines = EngineSet(cfg.engines, ["hipnet"])
    try:
        with caplog.at_level(logging.WARNING, logger="dicom_node.analyse"):
            analysis = analyse_study(study.identity.study_uid, read_sources(sources), engines, cfg)
    finally:
        engines.close()
    prediction = analysis.hips[1].decision.prediction
    assert prediction.task.side == "L"
    used = pydicom.dcmread(earlier, stop_before_pixels=True).SOPInstanceUID
    assert prediction.task.lateral is not None
    assert prediction.task.lateral.sop_instance_uid == used
    [note] = [n for n in prediction.notes if n.startswith("not used: lateral")]
    assert note.startswith(f"not used: lateral SOP instance {retake.SOPInstanceUID} (")
    assert note.endswith(f"); the earlier lateral {used} used instead")
    assert analysis.not_analysed == ()  # the hip was analysed with a lateral
    assert f"lateral {retake.SOPInstanceUID} not used" in caplog.text


_META_START = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00"  # group length


def _header_without_uids(path: Path) -> None:
    """A DICOM file whose header lacks the SOP Instance UID (and every other UID)."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.Modality = "DX"
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(
    ("write", "cause"),
    [
        (None, r"FileNotFoundError: \[Errno 2\] No such file or directory"),
        (lambda p: p.write_bytes(b"not a DICOM file" * 16), r"InvalidDicomError: "),
        (_header_without_uids, r"AttributeError: "),
        # Damaged on disk since it was received: was an "internal error" (category other).
        (lambda p: p.write_bytes(_META_START + b"\x10"), r"BytesLengthException: "),
    ],
    ids=["missing", "not-dicom", "no-uids", "cut-in-a-value"],
)
def test_a_header_that_cannot_be_read_names_the_file(
    tmp_path: Path, write: Callable[[Path], object] | None, cause: str
) -> None:
    path = tmp_path / "broken.dcm"
    if write is not None:
        write(path)
    with pytest.raises(PreprocessError, match=rf"^broken\.dcm: cannot read its header \({cause}"):
        read_sources([(path, "PACS")])


def test_a_study_of_two_patients_is_refused_naming_instances_not_patients(
    tmp_path: Path,
) -> None:
    study = write_study(tmp_path / "s", 31, "normal", THA, {"L": "dislocation"}, size=64)
    ap, lateral = study.files
    assert len(read_sources([(ap, "PACS"), (lateral, "PACS")])) == 2  # one patient: fine
    ds = pydicom.dcmread(lateral)
    ds.PatientID = "OTHER-PATIENT-7"
    ds.save_as(lateral)
    uids = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in (ap, lateral))
    with pytest.raises(
        MixedPatientsError,
        match=r"^instances of 2 patients \(Patient ID and Issuer\) under one Study Instance "
        r"UID, refused rather than reported under one patient's name: correct the study in the "
        rf"PACS and resend it \(SOP instances by patient: ({uids[0]}; {uids[1]}|{uids[1]}; "
        rf"{uids[0]})\)$",
    ) as info:
        read_sources([(ap, "PACS"), (lateral, "PACS")])
    assert "OTHER-PATIENT-7" not in str(info.value)
    # The same ID from two issuers is two patients; an empty ID says nothing.
    ds.PatientID = pydicom.dcmread(ap).PatientID
    ds.IssuerOfPatientID = "OTHER-HOSPITAL"
    ds.save_as(lateral)
    # An issuer on one instance only is not a second patient (was refused as 2 patients).
    first = pydicom.dcmread(ap)
    assert "IssuerOfPatientID" not in first
    assert len(read_sources([(ap, "PACS"), (lateral, "PACS")])) == 2
    # But with two issuers for the ID, one without cannot be told apart: refused.
    third = tmp_path / "third.dcm"
    first.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.333"
    first.IssuerOfPatientID = "HOSPITAL"
    first.save_as(third)
    with pytest.raises(MixedPatientsError, match=r"^instances of 3 patients"):
        read_sources([(ap, "PACS"), (lateral, "PACS"), (third, "PACS")])
    ds.PatientID = ""
    ds.save_as(lateral)
    assert len(read_sources([(ap, "PACS"), (lateral, "PACS")])) == 2


def test_an_unusable_ct_reconstruction_leaves_the_studys_next_one(
    tmp_path: Path, fusion_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A thin reconstruction (more slices, so routing's first choice) with a slice missing,
    # and a thicker one of the same hip: the engine gets the thicker one, and the SR's CT
    # is the one used.
    from engines.phantoms.ct import ct_hip, write_ct_study_series

    study = write_study(tmp_path / "xr", 9, "osteoarthritis", "normal", size=64)
    thin = write_ct_study_series(tmp_path / "thin", ct_hip("osteoarthritis", 9, shape=(12, 32, 32)),
                                 study.identity, series_number=301)  # fmt: skip
    thick = write_ct_study_series(tmp_path / "thick", ct_hip("osteoarthritis", 9, shape=(8, 32, 32)),
                                  study.identity, series_number=302)  # fmt: skip
    thin.pop(5).unlink()  # 11 slices left, with a gap
    rule = {"name": "mm", "engine": "hip_multimodal", "when": {"Modality": ["DX"]}}
    cfg = pipeline_config(
        tmp_path / "spool", fusion_cache, routing={"rules": [rule], "cascade": []}
    )
    images = read_sources([(p, "PACS") for p in (study.files[0], *thin, *thick)])
    thin_uid, thick_uid = (pydicom.dcmread(s[0]).SeriesInstanceUID for s in (thin, thick))
    thin_only = read_sources([(p, "PACS") for p in (study.files[0], *thin)])
    engines = EngineSet(cfg.engines, ["hip_multimodal"])
    try:
        with caplog.at_level(logging.WARNING, logger="dicom_node.ct_input"):
            analysis = analyse_study(study.identity.study_uid, images, engines, cfg)
        without = analyse_study(study.identity.study_uid, thin_only, engines, cfg)
    finally:
        engines.close()

    def right_hip(analysed: StudyAnalysis) -> Prediction:
        (hip,) = [h for h in analysed.hips if h.decision.prediction.task.side == "R"]
        return hip.decision.prediction

    right = right_hip(analysis)
    assert right.inputs["ct"] is True
    assert right.task.ct_series == thick_uid and right.task.ct_alternatives == ()
    assert f"CT series {thin_uid} not used" in caplog.text and "missing" in caplog.text
    # Without the thicker one the hip has no CT: the SR said only that, as for a study sent
    # without one. Its notes name the series the study held and why it was not used.
    alone = right_hip(without)
    assert alone.inputs["ct"] is False
    [note] = [n for n in alone.notes if "CT" in n]
    assert note.startswith(f"not used: CT series {thin_uid} (1 slice(s) missing between ")
    assert note.endswith("; read as missing)")


def test_an_ap_that_cannot_be_decoded_leaves_the_others_triage(
    tmp_path: Path, engine_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Was: the whole study failed (pixel_data) and its readable pelvis got no triage either.
    study = write_study(tmp_path, 9, "femoral_neck_fracture", "normal", size=64)
    (pelvis,) = study.files
    repeat = pydicom.dcmread(pelvis)  # a repeat exposure, damaged on its way
    repeat.SOPInstanceUID = f"{str(repeat.SOPInstanceUID)[:60]}.2"
    repeat.PixelData = repeat.PixelData[: len(repeat.PixelData) // 2]
    repeat.save_as(tmp_path / "repeat.dcm", enforce_file_format=True)
    cfg = pipeline_config(
        tmp_path / "spool", engine_cache, routing={"rules": [SCREEN_RULE], "cascade": []}
    )
    engines = EngineSet(cfg.engines, ["hip_screen"])
    try:
        with caplog.at_level(logging.WARNING, logger="dicom_node.analyse"):
            analysis = analyse_study(
                study.identity.study_uid,
                read_sources([(pelvis, "PACS"), (tmp_path / "repeat.dcm", "PACS")]),
                engines, cfg,
            )  # fmt: skip
            assert sorted(h.decision.prediction.task.side for h in analysis.hips) == ["L", "R"]
            assert {h.ap.image.source.sop_instance_uid for h in analysis.hips} == {
                str(pydicom.dcmread(pelvis).SOPInstanceUID)
            }
            ((uid, why),) = analysis.not_analysed  # once, though both its hips were tasks
            assert uid == repeat.SOPInstanceUID and "pixel data" in why
            # One line, the UID not repeated: the SR's Comment names it beside the reason.
            assert why.startswith("pixel data cannot be decoded") and "\n" not in why
            assert caplog.text.count(f"SOP instance {uid} not analysed") == 1
            recorded = json.loads(summary(analysis))
            assert [h["ap"] for h in recorded["hips"]] == [
                h.decision.prediction.task.ap.sop_instance_uid for h in analysis.hips
            ]
            assert recorded["not_analysed"] == [{"sop_instance_uid": uid, "why": why}]
            # Each finding as the SR's banner prints it, kept on its side of the threshold.
            assert [r["shown"] for h in recorded["hips"] for r in h["reported"]] == [
                probability_text(f) for h in analysis.hips for f in reported_findings(h.decision)
            ]
            # Nothing left to report: the job fails as before, saying why.
            only = read_sources([(tmp_path / "repeat.dcm", "PACS")])
            with pytest.raises(
                PreprocessError, match=rf"^SOP instance {uid}: pixel data cannot be decoded"
            ):
                analyse_study(study.identity.study_uid, only, engines, cfg)
    finally:
        engines.close()


def test_a_reason_is_one_line_the_same_in_every_run() -> None:
    # pydicom lists each failed decoder on a line of its own, and Pillow's names a BytesIO
    # by its address: the SR's Comment spanned lines, and a rerun's SR (its UID hashed from
    # its content) got a new UID.
    uid = "1.2.3.4"
    decoders = RuntimeError(
        "Unable to decode as exceptions were raised by all available plugins:\n  pylibjpeg: "
        "libjpeg error\n  pillow: cannot identify image file <_io.BytesIO object at 0x7fb08>"
    )
    exc = PreprocessError(
        f"SOP instance {uid}: pixel data cannot be decoded ({describe(decoders)})"
    )
    assert analyse_module._why(exc, uid) == (
        "pixel data cannot be decoded (RuntimeError: Unable to decode as exceptions were "
        "raised by all available plugins: pylibjpeg: libjpeg error; pillow: cannot identify "
        "image file <_io.BytesIO object>)"
    )


def _failing(engines: EngineSet, name: str, error: Exception, side: str | None = None) -> None:
    """Make ``engines.predict`` raise ``error`` for engine ``name`` on a batch holding a hip
    of ``side`` (any batch: None), as a NaN in one row fails its batch; the others run."""
    predict = engines.predict

    def predict_or_fail(engine: str, items: Any) -> list[Prediction]:
        if engine == name and (side is None or any(i.task.side == side for i in items)):
            raise error
        return predict(engine, items)

    engines.predict = predict_or_fail  # type: ignore[method-assign]


def test_an_engine_that_fails_leaves_its_hips_out_and_the_others_reported(
    tmp_path: Path, engine_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Was: Hip-Net answering NaN for a prosthesis failed the whole study ("engine"), and
    # the screening engine's urgent fracture of the same study was never reported.
    study = write_study(tmp_path, 9, "femoral_neck_fracture", THA, size=64)
    (pelvis,) = study.files
    uid = str(pydicom.dcmread(pelvis).SOPInstanceUID)
    images = read_sources([(pelvis, "PACS")])
    cfg = pipeline_config(
        tmp_path / "spool", engine_cache, routing={"rules": [SCREEN_RULE, DUAL], "cascade": []}
    )
    engines = EngineSet(cfg.engines, ["hip_screen", "hipnet"])
    nan = EngineOutputError(f"engine hipnet 0.0.1-test (onnxruntime) gave non-finite "
                            f"probabilities for hip R of {uid}")  # fmt: skip
    try:
        _failing(engines, "hipnet", nan, side="R")  # NaN for the right hip only
        with caplog.at_level(logging.WARNING, logger="dicom_node.analyse"):
            analysis = analyse_study(study.identity.study_uid, images, engines, cfg)
        # Each hip asked again alone: Hip-Net's answer for the left hip is kept (one
        # hip's NaN cost the engine's every hip of the study, an urgent finding included).
        assert sorted(
            (h.decision.prediction.task.engine, h.decision.prediction.task.side)
            for h in analysis.hips
        ) == [("hip_screen", "L"), ("hip_screen", "R"), ("hipnet", "L")]
        assert analysis.not_analysed == ((uid, f"hipnet could not analyse hip R: {nan}"),)
        assert analysis.partial_reasons == ("engine",)
        assert "engine hipnet failed on 1 hip(s), reported as not analysed" in caplog.text
        _failing(engines, "hipnet", nan)  # NaN for both: both left out
        both = analyse_study(study.identity.study_uid, images, engines, cfg)
        assert {h.decision.prediction.task.engine for h in both.hips} == {"hip_screen"}
        assert both.not_analysed == (
            (uid, f"hipnet could not analyse hip R: {nan}; hipnet could not analyse hip L: {nan}"),
        )
        # An engine that cannot run is retried (the job), and left out on the last try only.
        down = EngineRuntimeError("hipnet on triton: server unreachable")
        _failing(engines, "hipnet", down)
        with pytest.raises(EngineRuntimeError, match=r"^hipnet on triton: server unreachable$"):
            analyse_study(study.identity.study_uid, images, engines, cfg)
        last = analyse_study(study.identity.study_uid, images, engines, cfg, final_attempt=True)
        assert len(last.hips) == 2 and "server unreachable" in last.not_analysed[0][1]
        # No engine answered: the first failure, as before.
        _failing(engines, "hip_screen", EngineOutputError("engine hip_screen: non-finite"))
        with pytest.raises(EngineOutputError, match=r"^engine hip_screen: non-finite$"):
            analyse_study(study.identity.study_uid, images, engines, cfg, final_attempt=True)
    finally:
        engines.close()


def test_an_instance_whose_header_cannot_be_read_leaves_the_others_triage(
    tmp_path: Path, engine_cache: Path
) -> None:
    # Was: the study failed (pixel_data) for one missing or damaged file, its good AP
    # unreported, though the same file found unreadable one step later left it PARTIAL.
    study = write_study(tmp_path, 9, "femoral_neck_fracture", "normal", size=64)
    (pelvis,) = study.files
    missing = tmp_path / "1.2.826.0.1.3680043.8.498.404.dcm"
    unreadable: dict[str, str] = {}
    images = read_sources([(pelvis, "PACS"), (missing, "PACS")], unreadable)
    assert [i.path for i in images] == [pelvis]
    ((uid, why),) = unreadable.items()
    assert uid == missing.stem and why.startswith("cannot read its header (FileNotFoundError")
    cfg = pipeline_config(
        tmp_path / "spool", engine_cache, routing={"rules": [SCREEN_RULE], "cascade": []}
    )
    engines = EngineSet(cfg.engines, ["hip_screen"])
    try:
        analysis = analyse_study(
            study.identity.study_uid, images, engines, cfg, unreadable=unreadable
        )
    finally:
        engines.close()
    assert len(analysis.hips) == 2 and analysis.not_analysed == ((uid, why),)
    # None readable: the study fails as before, naming the file.
    with pytest.raises(PreprocessError, match=rf"^{missing.name}: cannot read its header"):
        read_sources([(missing, "PACS")], {})
