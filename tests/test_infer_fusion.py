"""EngineSet with the fusion engines: CT, text and clinical inputs by name, missing ones
masked and recorded, attention per modality; the osteoporosis engine has no heat map."""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from dicom_node.clinical import ClinicalText, ClinicalVariables, TextPart, from_dataset
from dicom_node.config import EnginesConfig
from dicom_node.infer import MODALITY_ORDER, EngineSet, EngineUnavailableError, HipBatchItem
from dicom_node.models import HipTask
from dicom_node.preprocess import PreparedImage, hip_input, load_image
from dicom_node.route.plan import source_image
from engines.ct_grid import engine_volume
from engines.models.hip_multimodal import MODALITIES
from engines.phantoms.clinical import multimodal_case
from engines.phantoms.ct import ct_hip, phantom_image
from engines.phantoms.studies import write_study


@pytest.fixture(scope="module")
def engines(fusion_cache: Path) -> Iterator[EngineSet]:
    cfg = EnginesConfig(cache_dir=fusion_cache, backend="onnxruntime", threads=1)
    opened = EngineSet(cfg, ["hip_multimodal", "osteoporosis"])
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def pelvis(tmp_path_factory: pytest.TempPathFactory) -> PreparedImage:
    study = write_study(tmp_path_factory.mktemp("study"), 9, "normal", "osteoarthritis", size=64)
    path = study.files[0]
    return load_image(source_image(pydicom.dcmread(path), path, "PACS"))


def item(
    engines: EngineSet, engine: str, pelvis: PreparedImage, side: str, *, ct: bool, text: bool
) -> HipBatchItem:
    pre = engines.manifest(engine).preprocessing
    task = HipTask(engine, side, pelvis.source)
    ds = copy.deepcopy(pelvis.header)
    ds.StudyDescription = "XR PELVIS"  # the protocol's name: never the engine's text
    if text:
        multimodal_case("osteoarthritis", 1).stamp(ds)
    volume = None
    if ct:
        assert pre.volume is not None
        volume = engine_volume(phantom_image(ct_hip("osteoarthritis", 1)), pre.volume)
    return HipBatchItem(task, hip_input(pelvis, side, pre), None, volume, from_dataset(ds))


def test_the_engine_that_will_run_says_which_text_it_reads(engines: EngineSet) -> None:
    # Routing's `requires: [text]` asks this: the engine's tokenizer decides, as it runs.
    assert engines.reads_text("hip_multimodal", "groin pain, ?FAI")
    for placeholder in ("", "-", "N/A", "股関節痛 転倒"):
        assert not engines.reads_text("hip_multimodal", placeholder)
    # An engine without a text input (or not open) reads any text: nothing to hold back.
    assert engines.reads_text("osteoporosis", "N/A")
    assert engines.reads_text("hip_screen", "N/A")
    assert not engines.reads_text("hip_screen", "")


def test_modality_order_is_the_networks() -> None:
    assert MODALITY_ORDER == MODALITIES


def test_missing_ct_and_text_are_masked_and_recorded(
    engines: EngineSet, pelvis: PreparedImage
) -> None:
    batch = [
        item(engines, "hip_multimodal", pelvis, "R", ct=True, text=True),
        item(engines, "hip_multimodal", pelvis, "L", ct=False, text=True),
        item(engines, "hip_multimodal", pelvis, "R", ct=True, text=False),
    ]
    full, no_ct, no_text = engines.predict("hip_multimodal", batch)
    assert full.inputs == {"radiograph": True, "ct": True, "text": True}
    assert no_ct.inputs == {"radiograph": True, "ct": False, "text": True}
    assert no_text.inputs == {"radiograph": True, "ct": True, "text": False}
    for prediction in (full, no_ct, no_text):
        assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert sum(prediction.attention.values()) == pytest.approx(1.0, abs=1e-5)
        # Grad-CAM of the radiograph branch, one map per class.
        assert set(prediction.heatmaps) == set(prediction.classes)
    assert no_ct.attention["ct"] == 0.0 and no_text.attention["text"] == 0.0
    assert full.attention["ct"] > 0.0 and full.attention["text"] > 0.0
    # Alone in its batch, an item gives the same prediction (masking is per item).
    (alone,) = engines.predict("hip_multimodal", [batch[1]])
    assert np.allclose(alone.probabilities, no_ct.probabilities, atol=1e-5)


def test_osteoporosis_reads_the_clinical_variables_and_has_no_heat_map(
    engines: EngineSet, pelvis: PreparedImage
) -> None:
    with_values = item(engines, "osteoporosis", pelvis, "R", ct=False, text=False)
    assert with_values.clinical is not None
    without = HipBatchItem(with_values.task, with_values.ap, None)  # no header data at all
    known, unknown = engines.predict("osteoporosis", [with_values, without])
    assert known.classes == ("no_osteoporosis", "osteoporosis")
    assert known.heatmaps == {} and known.attention == {}
    assert known.inputs == {"age": True, "sex": True, "height": True, "weight": True}
    assert unknown.inputs == {"age": False, "sex": False, "height": False, "weight": False}
    assert known.probabilities != unknown.probabilities


@pytest.mark.parametrize(
    "placeholder",
    ["-", "N/A", "股関節痛 転倒 大腿骨頸部骨折疑い", "H\ufffdftschmerz links nach Sturz."],
)
def test_text_without_a_readable_word_is_missing(
    engines: EngineSet, pelvis: PreparedImage, placeholder: str
) -> None:
    # "-" or Japanese (almost all [UNK]) counted as text: the engine's text branch took 85 %
    # of the attention and flipped its finding, and the SR said the text was present.
    told = item(engines, "hip_multimodal", pelvis, "R", ct=True, text=True)
    assert told.clinical is not None
    text = ClinicalText((TextPart("ReasonForStudy", placeholder),))
    said = replace(told, clinical=replace(told.clinical, text=text))
    silent = item(engines, "hip_multimodal", pelvis, "R", ct=True, text=False)
    nothing, missing = engines.predict("hip_multimodal", [said, silent])
    assert nothing.inputs["text"] is False
    assert nothing.probabilities == pytest.approx(missing.probabilities, abs=1e-6)
    if "\ufffd" in placeholder:  # Latin-1 bytes under ISO_IR 192: was encoded as 'h ##ft'
        assert nothing.notes == (
            "not used: clinical text of ReasonForStudy (bytes that do not decode in the "
            "image's Specific Character Set)",
        )
    else:
        assert nothing.notes == (
            "not used: clinical text (no word the engine's English text encoder reads: a "
            "placeholder such as '-' or 'N/A', or another script; read as missing)",
        )
    assert missing.notes == ()


def test_only_the_attribute_that_did_not_decode_is_left_out(
    engines: EngineSet, pelvis: PreparedImage
) -> None:
    # One stray Latin-1 byte in one attribute threw the whole request text away.
    told = item(engines, "hip_multimodal", pelvis, "R", ct=True, text=True)
    assert told.clinical is not None
    text = ClinicalText((
        TextPart("ReasonForTheRequestedProcedure", "Pain 3\ufffd"),
        TextPart("RequestedProcedureDescription", "Hip pain, suspected osteoarthritis"),
    ))  # fmt: skip
    mixed = replace(told, clinical=replace(told.clinical, text=text))
    clean = replace(told, clinical=replace(told.clinical, text=ClinicalText((text.parts[1],))))
    both, only_clean = engines.predict("hip_multimodal", [mixed, clean])
    assert both.inputs["text"] is True
    assert both.probabilities == pytest.approx(only_clean.probabilities, abs=1e-6)
    assert both.notes == (
        "not used: clinical text of ReasonForTheRequestedProcedure (bytes that do not decode "
        "in the image's Specific Character Set)",
    )


def test_a_category_no_training_case_had_is_read_as_missing(
    engines: EngineSet, pelvis: PreparedImage, caplog: pytest.LogCaptureFixture
) -> None:
    # The engine learnt from F and M: sex O would be a value it never saw (with a spread of
    # ~0, logits of ~1e5 and a certain "no osteoporosis"), so it is read as missing.
    assert engines.manifest("osteoporosis").preprocessing.clinical_unseen == ("sex_other",)
    female = item(engines, "osteoporosis", pelvis, "R", ct=False, text=False)
    assert female.clinical is not None
    variables = female.clinical.variables
    other = replace(
        female, clinical=replace(female.clinical, variables=replace(variables, sex="O"))
    )
    unknown = replace(
        female, clinical=replace(female.clinical, variables=replace(variables, sex=None))
    )
    with caplog.at_level(logging.WARNING, logger="dicom_node.infer"):
        seen, unseen, missing = engines.predict("osteoporosis", [female, other, unknown])
    assert unseen.probabilities == pytest.approx(missing.probabilities, abs=1e-6)
    assert unseen.probabilities != pytest.approx(seen.probabilities, abs=1e-6)
    assert unseen.inputs == {"age": True, "sex": False, "height": True, "weight": True}
    assert unseen.notes == (
        "not used: sex (a value no training case of this engine had, or outside the range its "
        "training covered; read as missing)",
    )
    assert seen.notes == () and missing.notes == ()
    (record,) = caplog.records
    assert "R hip of" in record.message and "sex read as missing" in record.message
    assert "O" not in record.message.split("missing")[0].split("hip of")[0]


def test_a_value_in_the_header_that_is_not_usable_is_named_in_the_notes(
    engines: EngineSet, pelvis: PreparedImage, caplog: pytest.LogCaptureFixture
) -> None:
    # Patient's Size 162 (centimetres) was read as missing: the SR said Body height Absent,
    # as if it had never been sent, and the site never learnt its modality writes cm.
    female = item(engines, "osteoporosis", pelvis, "R", ct=False, text=False)
    assert female.clinical is not None
    variables = female.clinical.variables
    centimetres = replace(variables, height_m=None, bmi=None, invalid=("height",))
    hip = replace(female, clinical=replace(female.clinical, variables=centimetres))
    with caplog.at_level(logging.WARNING, logger="dicom_node.infer"):
        (prediction,) = engines.predict("osteoporosis", [hip])
    assert prediction.inputs["height"] is False
    assert prediction.notes == (
        "not used: height (in the header, but not a height in metres from 0.5 to 2.5 "
        "(centimetres or inches?); read as missing)",
    )
    (record,) = caplog.records
    assert record.message.endswith("R hip of " + hip.ap.image.source.sop_instance_uid
                                   + ": height in the header but not usable; read as missing")  # fmt: skip


def test_a_number_outside_what_training_covered_is_read_as_missing(
    engines: EngineSet, pelvis: PreparedImage
) -> None:
    # A weight of 150 (pounds, for 68 kg) beside a height in metres gave BMI 57: read as real,
    # the demo engine's osteoporosis probability went from 0.92 to 0.000.
    limits = engines.manifest("osteoporosis").preprocessing.clinical_limits
    assert limits is not None and limits["weight"][1] < 160 and limits["bmi"][1] < 60
    female = item(engines, "osteoporosis", pelvis, "R", ct=False, text=False)
    assert female.clinical is not None
    given = female.clinical.variables
    heavy = ClinicalVariables.from_values(given.age_years, given.sex, 1.62, 160.0)
    assert heavy.invalid == () and heavy.bmi is not None and heavy.bmi > limits["bmi"][1]
    hip = replace(female, clinical=replace(female.clinical, variables=heavy))
    unknown = replace(hip, clinical=replace(female.clinical, variables=heavy.without(
        ("weight", "bmi"))))  # fmt: skip
    read, missing = engines.predict("osteoporosis", [hip, unknown])
    assert read.probabilities == pytest.approx(missing.probabilities, abs=1e-6)
    assert read.inputs == {"age": True, "sex": True, "height": True, "weight": False}
    assert read.notes == (
        "not used: weight, bmi (a value no training case of this engine had, or outside the "
        "range its training covered; read as missing)",
    )


def test_a_manifest_without_the_unseen_record_is_served_with_a_warning(
    fusion_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "osteoporosis"
    shutil.copytree(fusion_cache / "osteoporosis", copy)
    manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
    del manifest["preprocessing"]["clinical_unseen"]  # packaged by an earlier version
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    cfg = EnginesConfig(cache_dir=tmp_path, backend="onnxruntime", threads=1)
    with caplog.at_level(logging.WARNING, logger="dicom_node.infer"):
        EngineSet(cfg, ["osteoporosis"]).close()
    assert "does not record which clinical values training saw" in caplog.text
    assert "dicom-node engines export osteoporosis" in caplog.text


def test_clinical_columns_that_differ_from_the_nodes_are_refused(
    fusion_cache: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "osteoporosis"
    shutil.copytree(fusion_cache / "osteoporosis", copy)
    manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
    manifest["preprocessing"]["clinical"] = ["age", "sex"]
    manifest["preprocessing"]["clinical_unseen"] = []
    manifest["preprocessing"]["clinical_limits"] = {"age": [0, 120]}
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    cfg = EnginesConfig(cache_dir=tmp_path, backend="onnxruntime", threads=1)
    with pytest.raises(
        EngineUnavailableError,
        match=r"engine 'osteoporosis' .*preprocessing\.clinical: expected the columns "
        r"\['age', 'sex_female'.*got \['age', 'sex'\]",
    ):
        EngineSet(cfg, ["osteoporosis"])


def test_a_tampered_text_encoder_is_refused(fusion_cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "hip_multimodal"
    shutil.copytree(fusion_cache / "hip_multimodal", copy)
    (copy / "text_encoder" / "tokenizer.json").write_text("{}")
    cfg = EnginesConfig(cache_dir=tmp_path, backend="onnxruntime", threads=1)
    with pytest.raises(EngineUnavailableError, match=r"artefact 'text_tokenizer' .* SHA-256"):
        EngineSet(cfg, ["hip_multimodal"])
