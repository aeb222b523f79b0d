"""Clinical context of a study, read from its own DICOM header: request text and demographics.

The multimodal engine reads :class:`ClinicalText` (why the study was requested, the
patient's history) and the osteoporosis engine reads :class:`ClinicalVariables` (age,
sex, height, weight, BMI). Both come from :func:`text_from_dataset` and
:func:`variables_from_dataset` (or :func:`from_dataset` for both) and never fail on what
a header holds: a value that cannot be read, or is implausible, is *missing*, and
:attr:`ClinicalVariables.invalid` names the variables whose value was present but
unusable.

Privacy: both objects hold patient data. Their ``repr`` and ``str`` say only which
sources or variables are present and how long the text is, never a value; errors name
arguments, never header content. Numeric and coded attributes (PatientAge, PatientSex,
PatientSize, PatientWeight and the dates) are read from their raw bytes, so pydicom's
validation warnings, which quote the offending value, are not raised for them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.errors import DicomNodeError

# Free-text sources, in the order their texts are joined: why the study was requested
# first (it survives the text encoder's truncation), the study's own description last.
TEXT_SOURCES: tuple[str, ...] = (
    "ReasonForTheRequestedProcedure",
    "ReasonForStudy",  # retired (0032,1030), still sent by some RIS
    "RequestedProcedureDescription",
    "AdmittingDiagnosesDescription",
    "AdditionalPatientHistory",
    "StudyDescription",
)
# Read from the items of RequestAttributesSequence too (where image objects carry them),
# after the top-level attribute of the same keyword.
REQUEST_ITEM_SOURCES: frozenset[str] = frozenset(
    {"ReasonForTheRequestedProcedure", "RequestedProcedureDescription"}
)

VARIABLES: tuple[str, ...] = ("age", "sex", "height", "weight", "bmi")
SEXES: tuple[str, ...] = ("F", "M", "O")

# as_vector()'s columns, in this fixed order. Sex is one-hot over SEXES; the missing mask
# marks all three of its columns when sex is missing.
VECTOR_FIELDS: tuple[str, ...] = (
    "age",
    "sex_female",
    "sex_male",
    "sex_other",
    "height",
    "weight",
    "bmi",
)
# Fixed reference (mean, standard deviation) used by as_vector(standardise=True): adult
# hip-radiograph populations, round numbers. They are constants, not fitted, so a vector
# means the same in every engine; an engine may learn its own scaling on top.
STANDARDISATION: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "age": (60.0, 15.0),  # years
        "height": (1.68, 0.10),  # metres
        "weight": (75.0, 15.0),  # kilograms
        "bmi": (26.5, 5.0),  # kg/m^2
    }
)
# What a value in `invalid` was not, as a report says it (the value itself is never shown).
INVALID_WORDS = {
    "age": "a usable age (malformed, over 120 years, from a placeholder birth date, or "
    "not what the birth and study dates give)",
    "sex": "M, F or O",
    "height": "a height in metres from 0.5 to 2.5 (centimetres or inches?)",
    "weight": "a weight in kilograms from 2 to 400",
    "bmi": "a plausible BMI from the height and weight (10 to 80)",
    "text": "text that decodes in the data set's Specific Character Set and holds a word "
    "the engine's text encoder reads",
}
# Plausible ranges (inclusive); a value outside is missing and reported in `invalid`.
# Ages over 120 are placeholders, not patients: 19000101 as a birth date (a registration
# system's "unknown") gave 124 years, which the osteoporosis engine read as certain disease.
AGE_RANGE = (0.0, 120.0)  # years
# Birth dates registration systems write when the patient's is unknown: an age from them is
# no age (some give under 120 years, so the range alone does not catch them).
PLACEHOLDER_BIRTH_DATES = frozenset(
    dt.date(*d) for d in ((1900, 1, 1), (1899, 12, 31), (1901, 1, 1), (1800, 1, 1))
)
HEIGHT_RANGE = (0.5, 2.5)  # metres
WEIGHT_RANGE = (2.0, 400.0)  # kilograms
BMI_RANGE = (10.0, 80.0)  # kg/m^2

DEFAULT_REQUIRED: tuple[str, ...] = ("age", "sex", "height", "weight")

_AGE_UNIT_YEARS = {"D": 1.0 / 365.25, "W": 7.0 / 365.25, "M": 1.0 / 12.0, "Y": 1.0}
_AGE = re.compile(r"(\d{1,3})([DWMY])")
_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DAYS_PER_YEAR = 365.25
# Dates an age may be computed against, best first.
_STUDY_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_WHITESPACE = re.compile(r"\s+")


class ClinicalError(DicomNodeError, ValueError):
    """Clinical context was asked for with an invalid argument (never about header content)."""


# What pydicom puts in place of bytes that do not decode in the declared character set.
UNDECODED = "\ufffd"


@dataclass(frozen=True, repr=False)
class TextPart:
    """One piece of free text and the keyword of the attribute it came from."""

    source: str
    text: str

    def __repr__(self) -> str:
        return f"TextPart({self.source}, {len(self.text)} characters)"

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class ClinicalText:
    """The free text of a study's request and history, de-duplicated, in TEXT_SOURCES order.

    ``text`` joins the parts into one text, each part ending with a full stop unless it
    already ends with punctuation; it is "" when ``empty``.
    """

    parts: tuple[TextPart, ...] = ()

    def __post_init__(self) -> None:
        for index, part in enumerate(self.parts):
            if not isinstance(part, TextPart):
                raise ClinicalError(
                    f"parts[{index}]: expected a TextPart, got {type(part).__name__}"
                )

    @property
    def text(self) -> str:
        return " ".join(_sentence(part.text) for part in self.parts)

    @property
    def empty(self) -> bool:
        return not self.parts

    @property
    def request(self) -> ClinicalText:
        """The request and history parts: all but the Study Description, which names the
        protocol rather than the clinical question (the text engines read this)."""
        return ClinicalText(tuple(p for p in self.parts if p.source != "StudyDescription"))

    @property
    def decoded(self) -> ClinicalText:
        """The parts that decoded in the data set's character set: a part holding U+FFFD
        (pydicom's replacement for bytes that did not) is left out, and the rest kept."""
        return ClinicalText(tuple(p for p in self.parts if UNDECODED not in p.text))

    @property
    def undecoded_sources(self) -> tuple[str, ...]:
        """The keywords of the parts :attr:`decoded` leaves out, each once."""
        return tuple(dict.fromkeys(p.source for p in self.parts if UNDECODED in p.text))

    @property
    def sources(self) -> tuple[str, ...]:
        """The keywords that contributed, in order, each once."""
        return tuple(dict.fromkeys(part.source for part in self.parts))

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        if self.empty:
            return "ClinicalText(empty)"
        sources = ", ".join(self.sources)
        return f"ClinicalText(text of {len(self)} characters from {sources})"

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class ClinicalVariables:
    """Demographics of the patient at the time of the study; None is missing.

    ``sex`` is one of SEXES. ``bmi`` is derived from height and weight by
    :meth:`from_values` (and so by :func:`variables_from_dataset`). ``invalid`` names the
    variables whose value was present in the header but unreadable or implausible (they
    are missing too).
    """

    age_years: float | None = None
    sex: str | None = None
    height_m: float | None = None
    weight_kg: float | None = None
    bmi: float | None = None
    invalid: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.sex is not None and self.sex not in SEXES:
            raise ClinicalError(f"sex: expected one of {SEXES} or None, got {self.sex!r}")
        for name, value in self._numbers().items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ClinicalError(
                    f"{name}: expected a number or None, got {type(value).__name__}"
                )
            if not math.isfinite(value):
                # The value itself is patient data: the message names the field only.
                raise ClinicalError(f"{name}: expected a finite number or None")
        for name in self.invalid:
            if name not in VARIABLES:
                raise ClinicalError(f"invalid: expected names from {VARIABLES}, got {name!r}")

    @classmethod
    def from_values(
        cls,
        age_years: float | None = None,
        sex: str | None = None,
        height_m: float | None = None,
        weight_kg: float | None = None,
        invalid: Sequence[str] = (),
    ) -> ClinicalVariables:
        """Variables with the plausibility rules applied and BMI derived.

        A value outside its range (AGE_RANGE, HEIGHT_RANGE, WEIGHT_RANGE) becomes missing
        and is added to ``invalid``; BMI is weight / height**2 when both are present, and
        missing (and invalid) outside BMI_RANGE.
        """
        flagged = list(invalid)
        age = _plausible(age_years, AGE_RANGE, "age", flagged)
        height = _plausible(height_m, HEIGHT_RANGE, "height", flagged)
        weight = _plausible(weight_kg, WEIGHT_RANGE, "weight", flagged)
        bmi = None
        if height is not None and weight is not None:
            bmi = _plausible(weight / height**2, BMI_RANGE, "bmi", flagged)
        return cls(
            age_years=age,
            sex=sex,
            height_m=height,
            weight_kg=weight,
            bmi=bmi,
            invalid=tuple(dict.fromkeys(flagged)),
        )

    def _numbers(self) -> dict[str, float | None]:
        return {
            "age": self.age_years,
            "height": self.height_m,
            "weight": self.weight_kg,
            "bmi": self.bmi,
        }

    @property
    def missing(self) -> Mapping[str, bool]:
        """Each of VARIABLES -> True when it is missing."""
        numbers = self._numbers()
        return MappingProxyType(
            {
                name: self.sex is None if name == "sex" else numbers[name] is None
                for name in VARIABLES
            }
        )

    def is_missing(self, name: str) -> bool:
        _check_names((name,), "name")
        return self.missing[name]

    @property
    def present(self) -> tuple[str, ...]:
        return tuple(name for name, gone in self.missing.items() if not gone)

    def complete_enough(self, required: Sequence[str] = DEFAULT_REQUIRED) -> bool:
        """Whether every variable in ``required`` (names from VARIABLES) is present."""
        if isinstance(required, str):
            raise ClinicalError(f"required: expected a sequence of names, got {required!r}")
        _check_names(required, "required")
        return all(not self.missing[name] for name in required)

    def unseen(self, columns: Sequence[str]) -> tuple[str, ...]:
        """The present variables whose value lies in one of ``columns`` (names from
        VECTOR_FIELDS): for sex the column of its category, for a number its own column.
        An engine's manifest lists the columns no training case set; a value there is one
        the engine has never seen (sex O where it learnt from F and M only)."""
        values, missing = self.as_vector(standardise=False)
        held = {  # the column holding each present variable's value
            field if field in VARIABLES else field.split("_")[0]: field
            for n, field in enumerate(VECTOR_FIELDS)
            if not missing[n] and (field in VARIABLES or values[n])
        }
        return tuple(name for name in VARIABLES if held.get(name) in columns)

    def outside(self, limits: Mapping[str, tuple[float, float]]) -> tuple[str, ...]:
        """The present numeric variables whose value lies outside their ``limits`` (natural
        units, as a manifest's ``preprocessing.clinical_limits``: what training covered)."""
        values = {"age": self.age_years, "height": self.height_m, "weight": self.weight_kg,
                  "bmi": self.bmi}  # fmt: skip
        return tuple(
            name
            for name, value in values.items()
            if value is not None and name in limits
            and not limits[name][0] <= value <= limits[name][1]
        )  # fmt: skip

    def without(self, names: Sequence[str]) -> ClinicalVariables:
        """These variables with ``names`` (from VARIABLES) made missing."""
        _check_names(names, "names")
        return replace(
            self,
            age_years=None if "age" in names else self.age_years,
            sex=None if "sex" in names else self.sex,
            height_m=None if "height" in names else self.height_m,
            weight_kg=None if "weight" in names else self.weight_kg,
            bmi=None if "bmi" in names else self.bmi,
        )

    def as_vector(
        self, standardise: bool = True
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """``(values, missing)``: float32 and bool arrays of shape (7,), in VECTOR_FIELDS order.

        Age, height, weight and BMI are standardised with the fixed STANDARDISATION
        constants ((value - mean) / sd) unless ``standardise`` is False (then raw: years,
        metres, kilograms, kg/m^2). Sex is one-hot (1.0 in the column of F, M or O).
        A missing variable's columns hold 0.0 and are True in ``missing``; the engines
        take the mask as extra inputs so an imputed 0 is never mistaken for a value.
        """
        values = np.zeros(len(VECTOR_FIELDS), dtype=np.float32)
        missing = np.zeros(len(VECTOR_FIELDS), dtype=np.bool_)
        numbers = self._numbers()
        for name in ("age", "height", "weight", "bmi"):
            column = VECTOR_FIELDS.index(name)
            value = numbers[name]
            if value is None:
                missing[column] = True
            elif standardise:
                mean, sd = STANDARDISATION[name]
                values[column] = (value - mean) / sd
            else:
                values[column] = value
        sex_columns = [VECTOR_FIELDS.index(f"sex_{name}") for name in ("female", "male", "other")]
        if self.sex is None:
            missing[sex_columns] = True
        else:
            values[sex_columns[SEXES.index(self.sex)]] = 1.0
        return values, missing

    def __repr__(self) -> str:
        present = ",".join(self.present) or "none"
        missing = ",".join(name for name, gone in self.missing.items() if gone) or "none"
        invalid = f"; invalid={','.join(self.invalid)}" if self.invalid else ""
        return f"ClinicalVariables(present={present}; missing={missing}{invalid})"

    __str__ = __repr__


@dataclass(frozen=True)
class ClinicalContext:
    """Both: the study's clinical text and variables."""

    text: ClinicalText
    variables: ClinicalVariables


def from_dataset(ds: Dataset) -> ClinicalContext:
    """The clinical text and variables of a study, from one of its instances' header."""
    return ClinicalContext(text=text_from_dataset(ds), variables=variables_from_dataset(ds))


def text_from_dataset(ds: Dataset) -> ClinicalText:
    """The free text of ``ds`` (see TEXT_SOURCES), whitespace collapsed, duplicates dropped.

    Duplicates are found ignoring case and whitespace; the first occurrence is kept.
    """
    _check_dataset(ds)
    parts: list[TextPart] = []
    seen: set[str] = set()
    for source in TEXT_SOURCES:
        for text in _texts(ds, source):
            key = text.casefold()
            if key not in seen:
                seen.add(key)
                parts.append(TextPart(source, text))
    return ClinicalText(tuple(parts))


def variables_from_dataset(ds: Dataset) -> ClinicalVariables:
    """Age, sex, height, weight and BMI of ``ds``'s patient.

    Age comes from PatientAge (nnnD, nnnW, nnnM or nnnY) or, when that is absent or
    unreadable, from PatientBirthDate and the first of StudyDate, SeriesDate,
    AcquisitionDate, ContentDate. Sex is PatientSex when it is F, M or O. Height is
    PatientSize (metres), weight PatientWeight (kilograms).
    """
    _check_dataset(ds)
    invalid: list[str] = []
    age = _age(ds, invalid)
    sex_value = _raw(ds, "PatientSex")
    sex = None
    if sex_value is not None:
        if sex_value.upper() in SEXES:
            sex = sex_value.upper()
        else:
            invalid.append("sex")
    height = _number(ds, "PatientSize", "height", invalid)
    weight = _number(ds, "PatientWeight", "weight", invalid)
    return ClinicalVariables.from_values(age, sex, height, weight, invalid)


def _check_dataset(ds: object) -> None:
    if not isinstance(ds, Dataset):
        raise ClinicalError(f"ds: expected a pydicom Dataset, got {type(ds).__name__}")


def _check_names(names: Sequence[str], what: str) -> None:
    for name in names:
        if name not in VARIABLES:
            raise ClinicalError(f"{what}: expected names from {VARIABLES}, got {name!r}")


def _sentence(text: str) -> str:
    return text if text[-1] in ".!?;:" else f"{text}."


def _clean(value: Any) -> Iterator[str]:
    """The non-empty texts of one element value (a multi-valued LO gives several)."""
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    for item in values:
        if item is None:
            continue
        text = _WHITESPACE.sub(" ", str(item)).strip(" \x00")
        if text:
            yield text


def _texts(ds: Dataset, keyword: str) -> Iterator[str]:
    if keyword in ds:
        value = ds.get(keyword)
        multi = isinstance(value, MultiValue)
        texts = list(_clean(value))
        # A multi-valued LO (AdmittingDiagnosesDescription) is one text of several items.
        if multi and texts:
            yield "; ".join(texts)
        else:
            yield from texts
    if keyword in REQUEST_ITEM_SOURCES and "RequestAttributesSequence" in ds:
        for item in ds.RequestAttributesSequence or ():
            if isinstance(item, Dataset):
                yield from _texts(item, keyword)


def _raw(ds: Dataset, keyword: str) -> str | None:
    """An attribute's value as stripped text, without pydicom converting (and validating) it."""
    if keyword not in ds:
        return None
    value = ds.get_item(keyword).value
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("ascii", errors="replace")
    elif isinstance(value, MultiValue | list | tuple):
        # PatientAge, PatientSize and the like have one value; several are unusable.
        text = "\\".join(str(item) for item in value)
    else:
        text = str(value)
    text = text.strip(" \x00")
    return text or None


def _number(ds: Dataset, keyword: str, name: str, invalid: list[str]) -> float | None:
    text = _raw(ds, keyword)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        invalid.append(name)
        return None
    if not math.isfinite(value):
        invalid.append(name)
        return None
    return value


def _plausible(
    value: float | None, bounds: tuple[float, float], name: str, invalid: list[str]
) -> float | None:
    if value is None:
        return None
    if not (math.isfinite(value) and bounds[0] <= value <= bounds[1]):
        invalid.append(name)
        return None
    return float(value)


def _date(ds: Dataset, keyword: str) -> dt.date | None:
    if keyword not in ds:
        return None
    value = ds.get_item(keyword).value
    if isinstance(value, dt.date):  # pydicom's DA when datetime conversion is on
        return value if not isinstance(value, dt.datetime) else value.date()
    text = _raw(ds, keyword)
    match = _DATE.fullmatch(text or "")
    if match is None:
        return None
    try:
        return dt.date(*(int(group) for group in match.groups()))
    except ValueError:
        return None


def _age(ds: Dataset, invalid: list[str]) -> float | None:
    stated = _raw(ds, "PatientAge")
    unknown = False  # "000Y": what many modalities write when they do not know the age
    birth = _date(ds, "PatientBirthDate")
    study = next((d for d in (_date(ds, k) for k in _STUDY_DATES) if d is not None), None)
    dated = None
    if birth is not None and study is not None and birth not in PLACEHOLDER_BIRTH_DATES:
        dated = (study - birth).days / _DAYS_PER_YEAR
    if stated is not None:
        match = _AGE.fullmatch(stated.upper())
        if match is not None:
            unit = _AGE_UNIT_YEARS[match.group(2)]
            years = int(match.group(1)) * unit
            unknown = years == 0 and match.group(2) == "Y"
            if not unknown:  # a newborn's 000D, 000W or 000M is an age like any other
                # Patient's Age and the dates that disagree (045Y for a patient the dates
                # make 62; 062M written for 062Y; 000D for a patient of 65): one of them is
                # wrong, and the engines would read either silently; the age is missing,
                # and the report says so.
                if dated is not None and abs(years - dated) > 1.0 + unit:
                    invalid.append("age")
                    return None
                return years
    if birth in PLACEHOLDER_BIRTH_DATES:
        # No age from the dates. Was: age 0 passed to the engine and also named not usable.
        invalid.append("age")
        return None
    if dated is not None:
        # A negative age (birth after the study) is caught by the plausibility check.
        return dated
    if unknown:
        # Missing, not a patient of age 0 (an engine trained on adults would read it far
        # outside anything it has seen).
        return None
    if stated is not None or (birth is None and _raw(ds, "PatientBirthDate") is not None):
        invalid.append("age")
    return None
