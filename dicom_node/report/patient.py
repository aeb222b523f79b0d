"""Source headers as the report builders take them: patient and study attributes that
highdicom accepts, and nothing that could put patient data into an error or a warning.

highdicom copies the Patient and General Study modules from a source header and refuses
what DICOM does not allow: PatientSex U (or f), a malformed date, a missing Type 2
attribute. Such a header still identifies the patient for the PACS, and one odd value
must not cost the study its report, so a value highdicom would refuse is sent empty (a
Type 2 attribute may be) and a missing one is added empty. highdicom's warning about a
single-component Patient Name quotes the name: it is silenced (:func:`quiet`), and its
exceptions are re-raised without their message (:func:`building`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom.dataset import Dataset

from dicom_node.errors import ReportError

# Type 2 attributes of the Patient and General Study modules that the builders read.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_SEXES = ("M", "F", "O")
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


def evidence_header(source: Dataset) -> Dataset:
    """A copy of ``source`` whose patient and study attributes highdicom accepts; the
    source is untouched (elements are shared, and replaced, never changed, in the copy).
    Values are read raw: pydicom's own check of a malformed value logs the value, and
    these are patient data."""
    header = Dataset()
    for tag in source.keys():  # noqa: SIM118 - iterating converts (and checks) values
        header[tag] = source.get_item(tag)
    for keyword in _TYPE_2:
        if keyword not in header or header.get_item(keyword).value is None:
            _put(header, keyword, "")
    sex = _raw(header, "PatientSex")
    if sex.upper() != sex or sex not in ("", *_SEXES):
        _put(header, "PatientSex", sex.upper() if sex.upper() in _SEXES else "")
    for keyword, pattern in (("PatientBirthDate", _DATE), ("StudyDate", _DATE),
                             ("StudyTime", _TIME)):  # fmt: skip
        if not pattern.fullmatch(_raw(header, keyword)):
            _put(header, keyword, "")
    return header


def _put(header: Dataset, keyword: str, value: str) -> None:
    if keyword in header:
        del header[keyword]  # a new element: the shared one stays the source's
    setattr(header, keyword, value)


def _raw(header: Dataset, keyword: str) -> str:
    """The element's text as stored, without pydicom's conversion (and its logging)."""
    value = header.get_item(keyword).value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return "" if value is None else str(value).strip()


@contextmanager
def building(what: str) -> Iterator[None]:
    """Build ``what`` from source headers: highdicom's warnings about their values are
    silenced, and its errors become a ReportError that does not quote them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*")
        try:
            yield
        except ReportError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ReportError(
                f"the source headers cannot make the {what} ({type(exc).__name__}; the "
                "details are not logged: they may quote patient data)"
            ) from None
