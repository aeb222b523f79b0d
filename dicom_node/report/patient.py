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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from highdicom.enum import SpecificCharacterSetValues
from pydicom import config
from pydicom.charset import convert_encodings, custom_encoders, decode_bytes
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import DA, TEXT_VR_DELIMS, TM, PersonName

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
_AGE = re.compile(r"\d{3}[DWMY]")
_DS = re.compile(r"(?=.{1,16}$)[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def evidence_header(source: Dataset) -> Dataset:
    """A copy of ``source`` whose patient and study attributes highdicom accepts; the
    source is untouched (elements are shared, and replaced, never changed, in the copy).
    Values are read raw: pydicom's own check of a malformed value logs the value, and
    these are patient data."""
    header = Dataset()
    encodings = convert_encodings(source.get("SpecificCharacterSet"))
    for tag in source.keys():  # noqa: SIM118 - iterating converts (and checks) values
        element = source.get_item(tag)
        if _vr(element) == "SQ":
            # A sequence's texts (an issuer of Other Patient IDs, of the Accession Number)
            # were copied as the source's bytes, kept when a result is written in another
            # set: ISO 2022 escapes and Latin-1 bytes in a UTF-8 object.
            items = [_decoded(item, encodings) for item in source[tag].value]
            header.add(DataElement(tag, "SQ", items))
        else:
            header[tag] = element
    for keyword in _TYPE_2:
        if keyword not in header or header.get_item(keyword).value is None:
            _put(header, keyword, "")
    sex = stored_text(header, "PatientSex")
    if sex.upper() != sex or sex not in ("", *_SEXES):
        _put(header, "PatientSex", sex.upper() if sex.upper() in _SEXES else "")
    for keyword, pattern, vr in (("PatientBirthDate", _DATE, DA), ("StudyDate", _DATE, DA),
                                 ("StudyTime", _TIME, TM)):  # fmt: skip
        text = stored_text(header, keyword)
        if text and not (pattern.fullmatch(text) and _is_valid(vr, text)):
            _put(header, keyword, "")  # also an impossible one: 00000000, 19500231, 250000
    for keyword, pattern in (("PatientAge", _AGE), ("PatientSize", _DS), ("PatientWeight", _DS)):
        text = stored_text(header, keyword) if keyword in header else ""
        if text and not pattern.fullmatch(text):
            del header[keyword]  # Type 3: an age of "67" (no unit) is left out, not copied
    for keyword in ("PatientName", "ReferringPhysicianName"):  # VM 1: the first if several
        value = header.get_item(keyword).value
        if isinstance(value, bytes) and b"\\" in value:
            # Decoded before it is split, as pydicom does: in ISO 2022 IR 87 (Japanese) and
            # GBK a 0x5C byte is also the second byte of many characters (山本, 宮崎).
            encodings = convert_encodings(source.get("SpecificCharacterSet"))
            text = decode_bytes(value.rstrip(b"\x00 "), encodings, TEXT_VR_DELIMS)
            _put(header, keyword, text.split("\\")[0])
        elif isinstance(value, MultiValue):
            _put(header, keyword, str(value[0]) if len(value) else "")
    return header


# Value representations whose bytes depend on the Specific Character Set (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})


def _vr(element: DataElement | RawDataElement) -> str | None:
    """The element's VR, from the dictionary where an implicit-VR file gave none."""
    if element.VR:
        return str(element.VR)
    return dictionary_VR(element.tag) if dictionary_has_tag(element.tag) else None


def _decoded(item: Dataset, encodings: list[str]) -> Dataset:
    """A copy of a sequence item whose texts are decoded (without pydicom's value checks,
    which log the value) from the source's character set: a result encodes them in its
    own. Other values are shared, as the header's are."""
    out = Dataset()
    for tag in item.keys():  # noqa: SIM118 - iterating converts (and checks) values
        element = item.get_item(tag)
        vr = _vr(element)
        if vr == "SQ":
            out.add(DataElement(tag, "SQ", [_decoded(i, encodings) for i in item[tag].value]))
        elif vr in _TEXT_VRS and isinstance(element.value, bytes):
            raw = element.value.rstrip(b"\x00 ")  # padding, as pydicom strips it
            if vr == "PN":
                value: str | PersonName = PersonName(str(PersonName(raw, encodings)))
            else:
                value = decode_bytes(raw, encodings, TEXT_VR_DELIMS)
            out.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
        else:
            out[tag] = element
    return out


# The Patient and (Patient) Study attributes a result carries: one set per study.
STUDY_LEVEL = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName",
    "StudyDescription",
)


def with_patient_and_study(evidence: Dataset, study: Dataset) -> Dataset:
    """A copy of ``evidence`` (an :func:`evidence_header`) carrying the patient and study
    attributes of ``study`` (another), decoded from ``study``'s character set so they read
    the same in ``evidence``'s. The images of one study can disagree (a name or an
    accession corrected in the PACS for some of them): its results must not."""
    picked = Dataset()
    for keyword in STUDY_LEVEL:
        if keyword in study:
            picked[Tag(keyword)] = study.get_item(keyword)
    decoded = _decoded(picked, convert_encodings(study.get("SpecificCharacterSet")))
    out = Dataset()
    for tag in evidence.keys():  # noqa: SIM118 - iterating converts (and checks) values
        out[tag] = evidence.get_item(tag)
    for keyword in STUDY_LEVEL:
        if keyword in out:
            del out[keyword]
        if keyword in decoded:
            out[Tag(keyword)] = decoded.get_item(keyword)
    return out


def disagreements(headers: Iterable[Dataset], study: Dataset) -> list[str]:
    """The patient and study attributes (not the sequences) on which ``headers`` differ
    from ``study``'s, compared as stored (no value is converted, checked or logged)."""
    return [
        k
        for k in STUDY_LEVEL
        if not k.endswith("Sequence") and any(_stored(h, k) != _stored(study, k) for h in headers)
    ]


def _stored(ds: Dataset, keyword: str) -> str | None:
    if keyword not in ds:
        return None
    value = ds.get_item(keyword).value
    if isinstance(value, bytes):
        return value.rstrip(b"\x00 ").decode("latin-1")
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _is_valid(vr: type[DA] | type[TM], text: str) -> bool:
    """Does pydicom (and so highdicom) take ``text`` as a date or time? Silently: its
    warnings quote the value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return vr(text) is not None
        except ValueError:
            return False


def output_charset(source: Dataset) -> str | None:
    """The Specific Character Set a result of ``source`` is written in.

    The source's own when it is one set without code extensions (ISO_IR 100, ISO_IR 192,
    ...), so a PACS gets what it sent; else UTF-8 (ISO_IR 192). highdicom refuses the ISO
    2022 forms Japanese and Korean studies use (a first value left empty, ISO 2022 IR
    149), and by the time a result is written every value is decoded text, which UTF-8
    encodes whatever set it came in.
    """
    value = source.get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    if isinstance(value, str) and value in _SINGLE_SETS:
        return value
    return UTF_8


_SINGLE_SETS = {v.value for v in SpecificCharacterSetValues if not v.value.startswith("ISO 2022")}
UTF_8 = "ISO_IR 192"


def fit_charset(result: Dataset) -> None:
    """Make ``result`` UTF-8 (ISO_IR 192) where its character set cannot encode one of its
    texts. The source's set fits what came from the source; the node adds its own text
    (the configured institution name, an engine's clinical-use statement or class names),
    and a source without a Specific Character Set allows ASCII only: 'Hôpital' in it was an
    invalid object, 'Łódź' under ISO_IR 100 was written as '?ód?'."""
    charset = result.get("SpecificCharacterSet")
    if charset == UTF_8:
        return
    codec = "ascii" if not charset else convert_encodings(charset)[0]
    if not _encodes(result, codec):
        result.SpecificCharacterSet = UTF_8


def _encodes(ds: Dataset, codec: str) -> bool:
    for element in ds.elements():
        if isinstance(element, RawDataElement):
            continue  # bytes as the source encoded them, in the source's own set
        if element.VR == "SQ":
            if not all(_encodes(item, codec) for item in element.value):
                return False
            continue
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        for value in values:
            if isinstance(value, str | PersonName) and not _writable(value, codec):
                return False
    return True


def _writable(value: str | PersonName, codec: str) -> bool:
    """Can pydicom write ``value`` in ``codec``? With the encoder it writes with: its own
    for ISO_IR 13 (JIS X 0201, one value of romaji or of katakana), where Python's shift_jis
    passed kanji and Cyrillic that came out as '?'; a person name component by component,
    as pydicom encodes it."""
    encoder = custom_encoders.get(codec)
    parts = re.split(r"[\^=]", str(value)) if isinstance(value, PersonName) else [str(value)]
    try:
        for part in parts:
            if encoder is not None:
                encoder(part)
            else:
                part.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _put(header: Dataset, keyword: str, value: str) -> None:
    if keyword in header:
        del header[keyword]  # a new element: the shared one stays the source's
    setattr(header, keyword, value)


def stored_text(header: Dataset, keyword: str) -> str:
    """An element's text as stored, stripped ("" when absent), without pydicom's conversion
    and its checks, whose warnings quote the value."""
    value = header.get_item(keyword).value if keyword in header else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return "" if value is None else str(value).strip(" \x00")


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
