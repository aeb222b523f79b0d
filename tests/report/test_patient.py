"""Source headers made acceptable to highdicom without quoting their values anywhere."""

from __future__ import annotations

import logging
import warnings

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_node.errors import ReportError
from dicom_node.report.patient import building, evidence_header


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
