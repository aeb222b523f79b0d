"""Clinical text and variables from a DICOM header (dicom_node.clinical)."""

from __future__ import annotations

import datetime as dt
import io
import logging

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from dicom_node.clinical import (
    STANDARDISATION,
    TEXT_SOURCES,
    VARIABLES,
    VECTOR_FIELDS,
    ClinicalContext,
    ClinicalError,
    ClinicalText,
    ClinicalVariables,
    TextPart,
    from_dataset,
    text_from_dataset,
    variables_from_dataset,
)
from dicom_node.errors import DicomNodeError

SECRET = "Jane Doe has a secret history of steroid use"


def raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> Dataset:
    """Store ``value`` unconverted, as pydicom holds an element read from a file."""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return ds


def full_text_dataset() -> Dataset:
    ds = Dataset()
    ds.StudyDescription = "XR PELVIS"
    ds.AdditionalPatientHistory = "Long-term   steroids.\r\nSLE"
    ds.AdmittingDiagnosesDescription = ["Hip pain", "Fall"]
    ds.RequestedProcedureDescription = "XR hip AP and lateral"
    ds.ReasonForStudy = "?AVN"
    ds.ReasonForTheRequestedProcedure = "groin pain, rule out AVN"
    item = Dataset()
    item.ReasonForTheRequestedProcedure = "Suspected osteonecrosis"
    item.RequestedProcedureDescription = "XR HIP AP AND LATERAL"  # a duplicate, ignoring case
    ds.RequestAttributesSequence = Sequence([item, Dataset()])
    return ds


# --- text -------------------------------------------------------------------------------


def test_text_gathers_every_source_in_a_stable_order() -> None:
    text = text_from_dataset(full_text_dataset())
    assert [(p.source, p.text) for p in text.parts] == [
        ("ReasonForTheRequestedProcedure", "groin pain, rule out AVN"),
        ("ReasonForTheRequestedProcedure", "Suspected osteonecrosis"),
        ("ReasonForStudy", "?AVN"),
        ("RequestedProcedureDescription", "XR hip AP and lateral"),
        ("AdmittingDiagnosesDescription", "Hip pain; Fall"),
        ("AdditionalPatientHistory", "Long-term steroids. SLE"),
        ("StudyDescription", "XR PELVIS"),
    ]
    assert text.text == (
        "groin pain, rule out AVN. Suspected osteonecrosis. ?AVN. XR hip AP and lateral. "
        "Hip pain; Fall. Long-term steroids. SLE. XR PELVIS."
    )
    assert text.sources == tuple(TEXT_SOURCES)
    assert not text.empty
    # What the engines read: the request and history, not the protocol's name.
    assert text.request.sources == tuple(TEXT_SOURCES[:-1])
    assert text.request.text.endswith("Long-term steroids. SLE.")
    only_description = Dataset()
    only_description.StudyDescription = "XR PELVIS"
    assert text_from_dataset(only_description).request.empty
    # Attribute order in the dataset does not matter.
    again = Dataset()
    for keyword in reversed(list(full_text_dataset().dir())):
        setattr(again, keyword, full_text_dataset().get(keyword))
    assert text_from_dataset(again) == text


@pytest.mark.parametrize("keyword", TEXT_SOURCES)
def test_each_source_alone(keyword: str) -> None:
    ds = Dataset()
    setattr(ds, keyword, "  hip  pain ")
    text = text_from_dataset(ds)
    assert text.parts == (TextPart(keyword, "hip pain"),)
    assert text.text == "hip pain."


@pytest.mark.parametrize(
    "keyword", ["ReasonForTheRequestedProcedure", "RequestedProcedureDescription"]
)
def test_request_attributes_sequence_items(keyword: str) -> None:
    ds = Dataset()
    items = [Dataset(), Dataset()]
    setattr(items[0], keyword, "first")
    setattr(items[1], keyword, "second!")
    ds.RequestAttributesSequence = Sequence(items)
    text = text_from_dataset(ds)
    assert text.parts == (TextPart(keyword, "first"), TextPart(keyword, "second!"))
    assert text.text == "first. second!"


def test_duplicates_ignoring_case_and_whitespace_are_dropped() -> None:
    ds = Dataset()
    ds.StudyDescription = "Hip  Pain"
    ds.AdditionalPatientHistory = "hip pain"
    ds.ReasonForTheRequestedProcedure = "HIP PAIN"
    text = text_from_dataset(ds)
    assert text.parts == (TextPart("ReasonForTheRequestedProcedure", "HIP PAIN"),)


def test_empty_values_and_no_text() -> None:
    ds = Dataset()
    ds.StudyDescription = ""
    ds.AdditionalPatientHistory = "   "
    ds.RequestAttributesSequence = Sequence([])
    text = text_from_dataset(ds)
    assert text.empty
    assert text.text == ""
    assert text.sources == ()
    assert len(text) == 0
    assert repr(text) == "ClinicalText(empty)"
    assert text_from_dataset(Dataset()) == ClinicalText()


def test_text_read_from_a_file() -> None:
    ds = full_text_dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AdditionalPatientHistory = "Hüftschmerz"
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
    assert "Hüftschmerz" in text_from_dataset(read).text
    assert text_from_dataset(read).sources == tuple(TEXT_SOURCES)


def test_text_never_in_repr_str_or_format() -> None:
    ds = Dataset()
    ds.AdditionalPatientHistory = SECRET
    ds.StudyDescription = "XR HIP"
    text = text_from_dataset(ds)
    for shown in (repr(text), str(text), f"{text}", repr(text.parts), str(text.parts[0])):
        assert "secret" not in shown.lower() and "Jane" not in shown
    assert repr(text) == (
        f"ClinicalText(text of {len(text.text)} characters from "
        "AdditionalPatientHistory, StudyDescription)"
    )
    assert repr(text.parts[0]) == f"TextPart(AdditionalPatientHistory, {len(SECRET)} characters)"
    context = from_dataset(ds)
    assert "secret" not in repr(context).lower()


def test_text_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    ds = Dataset()
    ds.AdditionalPatientHistory = SECRET
    with caplog.at_level(logging.DEBUG):
        text = text_from_dataset(ds)
        logging.getLogger("test").info("clinical text: %s", text)
    assert "secret" not in caplog.text.lower()
    assert "characters" in caplog.text


def test_text_errors() -> None:
    with pytest.raises(ClinicalError, match=r"ds: expected a pydicom Dataset, got str") as info:
        text_from_dataset(SECRET)  # type: ignore[arg-type]
    assert "secret" not in str(info.value).lower()
    assert isinstance(info.value, DicomNodeError) and isinstance(info.value, ValueError)
    with pytest.raises(ClinicalError, match=r"parts\[0\]: expected a TextPart, got str"):
        ClinicalText((SECRET,))  # type: ignore[arg-type]


# --- variables --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "years"),
    [
        ("045Y", 45.0),
        ("006M", 0.5),
        ("052W", 52 * 7 / 365.25),
        ("010D", 10 / 365.25),
        ("100Y", 100.0),
        ("120Y", 120.0),
        ("000D", 0.0),
    ],
)
def test_age_from_patient_age(age: str, years: float) -> None:
    ds = Dataset()
    ds.PatientAge = age
    variables = variables_from_dataset(ds)
    assert variables.age_years == pytest.approx(years)
    assert not variables.missing["age"]
    assert variables.invalid == ()
    # Beside a placeholder birth date the stated age stands, and is not named unusable
    # (a newborn's was passed to the engine and also reported "read as missing").
    ds.PatientBirthDate = "19000101"
    ds.StudyDate = "20240101"
    variables = variables_from_dataset(ds)
    assert variables.age_years == pytest.approx(years)
    assert variables.invalid == ()


def test_age_from_birth_and_study_dates() -> None:
    ds = Dataset()
    ds.PatientBirthDate = "19600315"
    ds.StudyDate = "20200315"
    assert variables_from_dataset(ds).age_years == pytest.approx(60.0)
    ds.StudyDate = "20200914"
    assert variables_from_dataset(ds).age_years == pytest.approx(60.5, abs=0.01)
    # Without a study date the next date in line is used.
    del ds.StudyDate
    ds.ContentDate = "20210315"
    assert variables_from_dataset(ds).age_years == pytest.approx(61.0, abs=0.01)
    ds.SeriesDate = "20220315"
    assert variables_from_dataset(ds).age_years == pytest.approx(62.0, abs=0.01)


def test_patient_age_stands_where_the_dates_agree_and_dates_back_it_up() -> None:
    ds = Dataset()
    ds.PatientAge = "060Y"
    ds.PatientBirthDate = "19600915"
    ds.StudyDate = "20200315"  # 59.5 years by the dates: an age in whole years agrees
    assert variables_from_dataset(ds).age_years == 60.0
    # Disagreeing, one of them is wrong (was: the stated 70 read silently): no age.
    ds.PatientAge = "070Y"
    variables = variables_from_dataset(ds)
    assert variables.age_years is None and variables.invalid == ("age",)
    ds.PatientAge = "714M"  # 59.5 years in months: agrees
    assert variables_from_dataset(ds).age_years == pytest.approx(59.5)
    ds.PatientAge = "060M"  # months written for years
    assert variables_from_dataset(ds).invalid == ("age",)
    ds.PatientAge = "070Y"
    raw(ds, "PatientAge", "AS", b"70  ")  # no unit: not an AS value, the dates are used
    variables = variables_from_dataset(ds)
    assert variables.age_years == pytest.approx(59.5, abs=0.01)
    assert variables.invalid == ()
    # "000Y" is what many modalities write for an unknown age: the dates say more.
    ds.PatientAge = "000Y"
    assert variables_from_dataset(ds).age_years == pytest.approx(59.5, abs=0.01)
    # A newborn's 000D, 000W or 000M is an age like 001D: contradicted by the dates, none
    # (was: the dates' 59.5 read silently, while 001D was named not usable).
    for newborn in ("000D", "000W", "000M", "001D", "001M"):
        ds.PatientAge = newborn
        variables = variables_from_dataset(ds)
        assert (variables.age_years, variables.invalid) == (None, ("age",)), newborn
    ds.PatientBirthDate, ds.StudyDate = "20200301", "20200315"  # two weeks old
    ds.PatientAge = "000M"
    variables = variables_from_dataset(ds)
    assert (variables.age_years, variables.invalid) == (0.0, ())


def test_age_with_datetime_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom.config, "datetime_conversion", True)
    ds = Dataset()
    ds.PatientBirthDate = "19600315"
    ds.StudyDate = "20200315"
    assert isinstance(ds.StudyDate, dt.date)
    assert variables_from_dataset(ds).age_years == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("elements", "invalid"),
    [
        ({"PatientAge": b"45X "}, ("age",)),
        ({"PatientAge": b"abcd"}, ("age",)),
        ({"PatientBirthDate": b"1960-03-15", "StudyDate": b"20200315"}, ("age",)),
        ({"PatientBirthDate": b"19601345", "StudyDate": b"20200315"}, ("age",)),
        ({"PatientBirthDate": b"20210101", "StudyDate": b"20200315"}, ("age",)),  # born later
        ({"PatientBirthDate": b"18000101", "StudyDate": b"20200315"}, ("age",)),  # 220 years
        ({"PatientBirthDate": b"19600315"}, ()),  # no study date: missing, not invalid
        ({"StudyDate": b"20200315"}, ()),
        ({"PatientAge": b"", "PatientBirthDate": b""}, ()),
        # "000Y" without the dates: an unknown age, not a patient of age 0.
        ({"PatientAge": b"000Y"}, ()),
        ({"PatientAge": b"000Y", "PatientBirthDate": b"19600315"}, ()),
        # Placeholders, not ages: read as 124 years, certain osteoporosis.
        ({"PatientBirthDate": b"19000101", "StudyDate": b"20240601"}, ("age",)),
        ({"PatientBirthDate": b"18991231", "StudyDate": b"20240601"}, ("age",)),
        ({"PatientAge": b"124Y"}, ("age",)),
        ({"PatientAge": b"000Y", "PatientBirthDate": b"19010101", "StudyDate": b"20200101"},
         ("age",)),
    ],
)  # fmt: skip
def test_age_missing(elements: dict[str, bytes], invalid: tuple[str, ...]) -> None:
    ds = Dataset()
    for keyword, value in elements.items():
        raw(ds, keyword, {"PatientAge": "AS"}.get(keyword, "DA"), value)
    variables = variables_from_dataset(ds)
    assert variables.age_years is None
    assert variables.missing["age"]
    assert variables.invalid == invalid


@pytest.mark.parametrize(
    ("value", "sex", "invalid"),
    [
        (b"M ", "M", ()),
        (b"F ", "F", ()),
        (b"O ", "O", ()),
        (b"f ", "F", ()),
        (b"", None, ()),
        (b"U ", None, ("sex",)),
        (b"XX", None, ("sex",)),
    ],
)
def test_sex(value: bytes, sex: str | None, invalid: tuple[str, ...]) -> None:
    variables = variables_from_dataset(raw(Dataset(), "PatientSex", "CS", value))
    assert variables.sex == sex
    assert variables.missing["sex"] is (sex is None)
    assert variables.invalid == invalid


def test_height_weight_and_bmi() -> None:
    ds = Dataset()
    ds.PatientSize = "1.75"
    ds.PatientWeight = "70.0"
    variables = variables_from_dataset(ds)
    assert variables.height_m == pytest.approx(1.75)
    assert variables.weight_kg == pytest.approx(70.0)
    assert variables.bmi == pytest.approx(70.0 / 1.75**2)
    assert variables.invalid == ()
    assert not any(variables.missing[name] for name in ("height", "weight", "bmi"))
    # BMI needs both.
    del ds.PatientWeight
    variables = variables_from_dataset(ds)
    assert variables.bmi is None and variables.missing["bmi"]
    assert variables.invalid == ()


@pytest.mark.parametrize(
    ("keyword", "value", "name"),
    [
        ("PatientSize", b"175 ", "height"),  # centimetres: implausible as metres
        ("PatientSize", b"0.3 ", "height"),
        ("PatientSize", b"2.6 ", "height"),
        ("PatientSize", b"abc ", "height"),
        ("PatientSize", b"1,75", "height"),
        ("PatientSize", b"NaN ", "height"),
        ("PatientSize", b"1.7\\1.8", "height"),
        ("PatientWeight", b"1.5 ", "weight"),
        ("PatientWeight", b"401 ", "weight"),
        ("PatientWeight", b"-70 ", "weight"),
        ("PatientWeight", b"inf ", "weight"),
    ],
)
def test_implausible_height_or_weight_is_missing(keyword: str, value: bytes, name: str) -> None:
    ds = Dataset()
    ds.PatientSize = "1.70"
    ds.PatientWeight = "70"
    raw(ds, keyword, "DS", value)
    variables = variables_from_dataset(ds)
    assert variables.missing[name]
    assert variables.missing["bmi"]
    assert variables.invalid == (name,)
    assert "abc" not in repr(variables) and "175" not in repr(variables)


def test_boundary_values_are_plausible() -> None:
    low = ClinicalVariables.from_values(age_years=0.0, height_m=0.5, weight_kg=2.5)
    assert (low.age_years, low.height_m, low.weight_kg) == (0.0, 0.5, 2.5)
    assert low.bmi == pytest.approx(10.0) and low.invalid == ()
    high = ClinicalVariables.from_values(age_years=120.0, height_m=2.5, weight_kg=400.0)
    assert high.bmi == pytest.approx(64.0) and high.invalid == ()


def test_implausible_bmi_is_missing() -> None:
    variables = ClinicalVariables.from_values(height_m=2.5, weight_kg=10.0)  # BMI 1.6
    assert variables.height_m == 2.5 and variables.weight_kg == 10.0
    assert variables.bmi is None
    assert variables.invalid == ("bmi",)


def test_nothing_present() -> None:
    variables = variables_from_dataset(Dataset())
    assert variables == ClinicalVariables()
    assert dict(variables.missing) == dict.fromkeys(VARIABLES, True)
    assert variables.present == ()
    assert not variables.complete_enough()
    assert variables.complete_enough(())
    assert repr(variables) == "ClinicalVariables(present=none; missing=age,sex,height,weight,bmi)"


def full_variables_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientAge = "072Y"
    ds.PatientSex = "F"
    ds.PatientSize = "1.60"
    ds.PatientWeight = "51.2"
    return ds


def test_values_read_from_a_file_without_conversion_warnings() -> None:
    ds = full_variables_dataset()
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
    variables = variables_from_dataset(read)
    assert (variables.age_years, variables.sex) == (72.0, "F")
    assert variables.bmi == pytest.approx(20.0)


def test_vector_order_standardised_and_raw() -> None:
    variables = variables_from_dataset(full_variables_dataset())
    assert VECTOR_FIELDS == (
        "age",
        "sex_female",
        "sex_male",
        "sex_other",
        "height",
        "weight",
        "bmi",
    )
    values, missing = variables.as_vector()
    assert values.dtype == np.float32 and values.shape == (7,)
    assert missing.dtype == np.bool_ and not missing.any()
    expected = [
        (72.0 - STANDARDISATION["age"][0]) / STANDARDISATION["age"][1],
        1.0,
        0.0,
        0.0,
        (1.60 - STANDARDISATION["height"][0]) / STANDARDISATION["height"][1],
        (51.2 - STANDARDISATION["weight"][0]) / STANDARDISATION["weight"][1],
        (20.0 - STANDARDISATION["bmi"][0]) / STANDARDISATION["bmi"][1],
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    raw_values, _ = variables.as_vector(standardise=False)
    np.testing.assert_allclose(raw_values, [72.0, 1, 0, 0, 1.60, 51.2, 20.0], rtol=1e-6)


@pytest.mark.parametrize(("sex", "column"), [("F", 1), ("M", 2), ("O", 3)])
def test_vector_sex_one_hot(sex: str, column: int) -> None:
    values, missing = ClinicalVariables(sex=sex).as_vector()
    assert values[1:4].tolist() == [float(i == column) for i in (1, 2, 3)]
    assert missing.tolist() == [True, False, False, False, True, True, True]


def test_vector_missing_values_are_zero_and_masked() -> None:
    ds = full_variables_dataset()
    del ds.PatientSex
    raw(ds, "PatientWeight", "DS", b"999 ")
    values, missing = variables_from_dataset(ds).as_vector()
    assert missing.tolist() == [False, True, True, True, False, True, True]
    assert values[missing].tolist() == [0.0] * 5
    assert values[0] != 0.0 and values[4] != 0.0


def test_values_in_columns_an_engine_never_saw() -> None:
    variables = ClinicalVariables.from_values(70.0, "O", 1.6, 60.0)
    assert variables.unseen(["sex_other"]) == ("sex",)
    assert variables.unseen(["sex_male", "sex_female"]) == ()  # only the patient's category
    assert variables.unseen(["height", "bmi"]) == ("height", "bmi")
    assert ClinicalVariables(sex="O").unseen(["age", "height"]) == ()  # missing: nothing seen
    assert ClinicalVariables(age_years=0.0).unseen(["age"]) == ("age",)  # a newborn's 0 counts
    without = variables.without(("sex", "bmi"))
    assert without.missing["sex"] and without.missing["bmi"]
    assert without.present == ("age", "height", "weight")
    assert without.unseen(["sex_other"]) == ()
    with pytest.raises(ClinicalError, match=r"names: expected names from .*, got 'sex_other'"):
        variables.without(("sex_other",))


def test_complete_enough() -> None:
    variables = variables_from_dataset(full_variables_dataset())
    assert variables.complete_enough()
    no_weight = ClinicalVariables.from_values(age_years=70.0, sex="F", height_m=1.6)
    assert not no_weight.complete_enough()
    assert no_weight.complete_enough(("age", "sex"))
    assert not no_weight.complete_enough(("bmi",))
    assert no_weight.is_missing("weight") and not no_weight.is_missing("height")


def test_variable_errors() -> None:
    variables = ClinicalVariables()
    with pytest.raises(ClinicalError, match=r"required: expected names from .*, got 'height_cm'"):
        variables.complete_enough(("age", "height_cm"))
    with pytest.raises(ClinicalError, match=r"required: expected a sequence of names, got 'age'"):
        variables.complete_enough("age")
    with pytest.raises(ClinicalError, match=r"name: expected names from .*, got 'bmi2'"):
        variables.is_missing("bmi2")
    with pytest.raises(
        ClinicalError, match=r"sex: expected one of \('F', 'M', 'O'\) or None, got 'X'"
    ):
        ClinicalVariables(sex="X")
    with pytest.raises(ClinicalError, match=r"age: expected a number or None, got str"):
        ClinicalVariables(age_years="70")  # type: ignore[arg-type]
    with pytest.raises(ClinicalError, match=r"weight: expected a finite number or None$"):
        ClinicalVariables(weight_kg=float("nan"))
    with pytest.raises(ClinicalError, match=r"invalid: expected names from .*, got 'shoe'"):
        ClinicalVariables(invalid=("shoe",))
    with pytest.raises(ClinicalError, match=r"ds: expected a pydicom Dataset, got NoneType"):
        variables_from_dataset(None)  # type: ignore[arg-type]


def test_variables_never_in_repr() -> None:
    ds = full_variables_dataset()
    raw(ds, "PatientWeight", "DS", b"999 ")
    variables = variables_from_dataset(ds)
    shown = repr(variables) + str(variables) + f"{variables}"
    for value in ("72", "1.6", "999", "F,", "'F'"):
        assert value not in shown
    assert repr(variables) == (
        "ClinicalVariables(present=age,sex,height; missing=weight,bmi; invalid=weight)"
    )


def test_from_dataset_gives_both() -> None:
    ds = full_variables_dataset()
    ds.update(full_text_dataset())
    context = from_dataset(ds)
    assert isinstance(context, ClinicalContext)
    assert context.text == text_from_dataset(ds)
    assert context.variables == variables_from_dataset(ds)


def test_decoded_leaves_out_only_the_parts_that_did_not_decode() -> None:
    text = ClinicalText((
        TextPart("ReasonForTheRequestedProcedure", "Pain 3\ufffd"),
        TextPart("RequestedProcedureDescription", "Hip pain"),
    ))  # fmt: skip
    assert text.decoded.text == "Hip pain."
    assert text.undecoded_sources == ("ReasonForTheRequestedProcedure",)
    assert ClinicalText().decoded.empty and ClinicalText().undecoded_sources == ()
