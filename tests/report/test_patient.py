"""Source headers made acceptable to highdicom without quoting their values anywhere."""

from __future__ import annotations

import logging
import warnings
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName

from dicom_node.errors import ReportError
from dicom_node.report.patient import (
    building,
    disagreements,
    evidence_header,
    fit_charset,
    output_charset,
    with_patient_and_study,
)


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def test_malformed_values_read_from_a_file_are_emptied_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    source = Dataset()
    source[0x00100010] = _raw(0x00100010, "PN", b"DOE^JANE")
    source[0x00100030] = _raw(0x00100030, "DA", b"1950615 ")  # as a file holds it
    source[0x00100040] = _raw(0x00100040, "CS", b"U ")
    source[0x00080020] = _raw(0x00080020, "DA", b"20261124")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (pydicom quotes the value) fails
        header = evidence_header(source)
        assert (header.PatientBirthDate, header.PatientSex, header.StudyDate) == (
            "",
            "",
            "20261124",
        )
        assert header.StudyID == "" and header.AccessionNumber == ""  # Type 2, added empty
    assert "1950" not in caplog.text
    assert source.get_item(0x00100030).value == b"1950615 "  # the source is untouched
    lower = Dataset()
    lower[0x00100040] = _raw(0x00100040, "CS", b"f ")
    assert evidence_header(lower).PatientSex == "F"
    assert lower.get_item(0x00100040).value == b"f "


def test_malformed_type_3_patient_values_are_left_out_silently() -> None:
    source = Dataset()
    source[0x00101010] = _raw(0x00101010, "AS", b"67")  # no unit: not an Age String
    source[0x00101020] = _raw(0x00101020, "DS", b"1,75")  # a decimal comma
    source[0x00101030] = _raw(0x00101030, "DS", b"70.5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's check would quote the value
        header = evidence_header(source)
    assert "PatientAge" not in header and "PatientSize" not in header
    assert header.get_item(0x00101030).value == b"70.5"
    assert "PatientAge" in source  # the source is untouched
    fine = Dataset()
    fine[0x00101010] = _raw(0x00101010, "AS", b"067Y")
    assert evidence_header(fine).PatientAge == "067Y"


def test_building_hides_the_values_in_third_party_errors() -> None:
    with (
        pytest.raises(
            ReportError,
            match=r"^the source headers cannot make the SR \(ValueError; the details are not "
            r"logged: they may quote patient data\)$",
        ),
        building("SR"),
    ):
        raise ValueError("Unable to convert '1950615' to 'DA' object")
    with (
        pytest.raises(ReportError, match=r"^no header for source instance\(s\) 1\.2$"),
        building("SR"),  # our own errors pass unchanged
    ):
        raise ReportError("no header for source instance(s) 1.2")


@pytest.mark.parametrize(
    ("keyword", "vr", "value"),
    [("PatientBirthDate", "DA", b"00000000"), ("PatientBirthDate", "DA", b"19500231"),
     ("StudyDate", "DA", b"20261301"), ("StudyTime", "TM", b"250000")],
)  # fmt: skip
def test_dates_and_times_of_the_right_form_but_impossible_are_emptied(
    keyword: str, vr: str, value: bytes
) -> None:
    source = Dataset()
    tag = Tag(keyword)
    source[tag] = _raw(tag, vr, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as highdicom would refuse them: was a failed study
        assert getattr(evidence_header(source), keyword) == ""


def test_a_person_name_given_several_values_keeps_the_first() -> None:
    source = Dataset()
    source[0x00100010] = _raw(0x00100010, "PN", b"DOE^JANE\\ROE^J")
    source.ReferringPhysicianName = ["SMITH^A", "JONES^B"]
    header = evidence_header(source)
    assert (str(header.PatientName), str(header.ReferringPhysicianName)) == (
        "DOE^JANE",
        "SMITH^A",
    )


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        # In ISO 2022 IR 87, 本 and 崎 encode with a 0x5C second byte: not a separator.
        (["", "ISO 2022 IR 87"], "Yamamoto^Tarou=山本^太郎=やまもと^たろう"),
        (["", "ISO 2022 IR 87"], "Miyazaki^Hanako=宮崎^花子"),
        ("ISO_IR 192", "Müller^Jörg"),
        ("ISO_IR 100", "Müller^Jörg"),
    ],
)
def test_a_name_is_decoded_in_its_character_set_before_its_first_value_is_taken(
    charset: str | list[str], name: str
) -> None:
    encodings = convert_encodings(charset)
    source = Dataset()
    source.SpecificCharacterSet = charset
    for keyword, values in (("PatientName", [name]), ("ReferringPhysicianName", [name, "X^Y"])):
        raw = b"\\".join(PersonName(v).encode(encodings) for v in values)
        source[Tag(keyword)] = _raw(Tag(keyword), "PN", raw)
    header = evidence_header(source)
    assert str(header.PatientName) == name
    assert str(header.ReferringPhysicianName) == name  # the first of two


@pytest.mark.parametrize(
    ("source", "written"),
    [(None, None), ("ISO_IR 100", "ISO_IR 100"), ("ISO_IR 192", "ISO_IR 192"),
     (["", "ISO 2022 IR 87"], "ISO_IR 192"), ("ISO 2022 IR 149", "ISO_IR 192"),
     (["ISO 2022 IR 6", "ISO 2022 IR 100"], "ISO_IR 192")],
)  # fmt: skip
def test_results_keep_a_single_character_set_else_use_utf_8(
    source: str | list[str] | None, written: str | None
) -> None:
    header = Dataset()
    if source is not None:
        header.SpecificCharacterSet = source
    assert output_charset(header) == written


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize(
    ("charset", "issuer", "name"),
    [
        (["", "ISO 2022 IR 87"], "別病院", "Yamamoto^Tarou=山本^太郎"),
        ("ISO_IR 100", "Clinique Ñandú", "Müller^Zoë"),
    ],
)
def test_texts_in_sequences_are_decoded_in_the_sources_character_set(
    charset: str | list[str], issuer: str, name: str, implicit: bool
) -> None:
    # Sequence items were copied as the source's bytes, which a result in UTF-8 then
    # declared UTF-8: ISO 2022 escapes (and Latin-1 bytes) in the SR and the overlays.
    source = Dataset()
    source.SpecificCharacterSet = charset
    other = Dataset()
    other.PatientID = "X123"
    other.IssuerOfPatientID = issuer
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = f"{issuer} root"
    other.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    other.PatientName = name  # a PN in an item, decoded as a name is
    source.OtherPatientIDsSequence = [other]
    read = dcmread(_written(source, implicit))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's checks quote values: none may run
        header = evidence_header(read)
    header.SpecificCharacterSet = "ISO_IR 192"  # a result's own set, as fit_charset picks
    back = dcmread(_written(header, implicit))  # written untouched, as the builders do
    [item] = back.OtherPatientIDsSequence
    assert (item.PatientID, item.IssuerOfPatientID) == ("X123", issuer)
    assert item.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == f"{issuer} root"
    assert str(item.PatientName) == name


def _written(ds: Dataset, implicit: bool) -> BytesIO:
    out = BytesIO()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    return out


def test_a_study_header_lends_its_patient_and_study_whatever_its_character_set() -> None:
    image = Dataset()
    image.SpecificCharacterSet = "ISO_IR 100"
    image.PatientName = "Müller^Zoë"
    image.AccessionNumber = "ACC-OLD"
    image.Manufacturer = "Ærø Imaging"  # the image's own, kept
    image.StudyDescription = "Hüfte"
    study = Dataset()
    study.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    study.PatientName = "Yamamoto^Tarou=山本^太郎"
    study.AccessionNumber = "ACC-NEW"
    lent = with_patient_and_study(
        evidence_header(dcmread(_written(image, False))),
        evidence_header(dcmread(_written(study, False))),
    )
    assert lent.Manufacturer == "Ærø Imaging"  # the image's own, in its own set
    lent.SpecificCharacterSet = "ISO_IR 192"  # as fit_charset makes it for the name
    back = dcmread(_written(lent, False))
    assert (str(back.PatientName), back.AccessionNumber) == ("Yamamoto^Tarou=山本^太郎", "ACC-NEW")
    assert "StudyDescription" not in back  # the study header has none: not the image's


def test_disagreements_name_the_attributes_that_differ_as_stored() -> None:
    first = dcmread(_written(_header("DOE^JANE", "A1"), False))
    same = dcmread(_written(_header("DOE^JANE", "A1"), False))
    _ = same.PatientName  # converted in one, raw in the other: still the same
    other = dcmread(_written(_header("DOE^JANET", "A2"), False))
    assert disagreements([first, same], first) == []
    assert disagreements([first, same, other], first) == ["PatientName", "AccessionNumber"]


def _header(name: str, accession: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = name
    ds.AccessionNumber = accession
    ds.StudyDate = "20261124"
    return ds


@pytest.mark.parametrize(
    ("institution", "written"),
    [("ﾄｳｷｮｳﾋﾞｮｳｲﾝ", "ISO_IR 13"), ("東京大学病院", "ISO_IR 192"), ("Больница", "ISO_IR 192"),
     ("ＡＢＣ病院", "ISO_IR 192"),
     # Romaji and katakana in one value: pydicom's encoder writes one or the other.
     ("ﾄｳｷｮｳ HOSPITAL", "ISO_IR 192")],
)  # fmt: skip
def test_a_katakana_source_set_takes_only_what_pydicom_can_write_in_it(
    institution: str, written: str
) -> None:
    # Python's shift_jis encodes kanji and Cyrillic; pydicom writes ISO_IR 13 with its own
    # JIS X 0201 encoder, which cannot: the result kept ISO_IR 13 and read '??????'.
    result = Dataset()
    result.SpecificCharacterSet = "ISO_IR 13"
    result.InstitutionName = institution
    fit_charset(result)
    assert result.SpecificCharacterSet == written
    result.PatientName = "ﾔﾏﾀﾞ^ﾀﾛｳ"  # a name, component by component, fits ISO_IR 13
    fit_charset(result)
    assert result.SpecificCharacterSet == written
    buffer = BytesIO()
    result.save_as(buffer, implicit_vr=False, little_endian=True)
    back = dcmread(BytesIO(buffer.getvalue()), force=True)
    assert (back.InstitutionName, str(back.PatientName)) == (institution, "ﾔﾏﾀﾞ^ﾀﾛｳ")
