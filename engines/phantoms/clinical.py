"""Synthetic clinical context: request texts and demographics consistent with a label.

The multimodal engine (radiograph + CT + request text) and the osteoporosis engine
(radiograph + clinical variables) read a study's clinical context from its DICOM header
(:mod:`dicom_node.clinical`). These generators make that context for phantom studies:

- :func:`multimodal_case` for MULTIMODAL_CLASSES: an English request ("58 y/o M, groin
  pain on internal rotation, ?FAI") whose wording points to the label in most cases but
  not all: some texts are uninformative ("hip pain"), some mention another label's
  finding, some studies have no text at all; age and sex follow the label (osteonecrosis
  and impingement younger, osteoarthritis older).
- :func:`osteoporosis_case` for OSTEOPOROSIS_CLASSES: age, sex, height and weight drawn
  from label-shifted distributions (osteoporosis: older, more often female, lower BMI),
  some variables missing, and a medical-history text with risk factors more frequent
  under osteoporosis.

Everything is drawn from ``numpy.random.default_rng([seed, purpose, label])``: the same
seed and label always give the same case. :meth:`ClinicalPhantom.fragment` gives the
DICOM attributes and :meth:`ClinicalPhantom.stamp` writes them onto a factory instance.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_node.clinical import ClinicalVariables, text_from_dataset
from engines.phantoms.phantom import check_choice, check_seed

MULTIMODAL_CLASSES: tuple[str, ...] = (
    "normal",
    "osteoarthritis",
    "osteonecrosis_of_femoral_head",
    "femoroacetabular_impingement",
)
OSTEOPOROSIS_CLASSES: tuple[str, ...] = ("osteoporosis", "no_osteoporosis")

# Text attributes a case may set: the request's (inside RequestAttributesSequence, as an
# image carries them) and the Patient Study module's.
REQUEST_KEYWORDS: tuple[str, ...] = (
    "ReasonForTheRequestedProcedure",
    "RequestedProcedureDescription",
)
STUDY_KEYWORDS: tuple[str, ...] = ("AdmittingDiagnosesDescription", "AdditionalPatientHistory")
LO_MAX = 64  # characters of an LO value (the reason, the procedure, a diagnosis)

# Shares of multimodal cases without any text and with an uninformative one; the rest
# are informative, and CONFOUNDER_RATE of those also mention another label's finding.
NO_TEXT_RATE = 0.10
UNINFORMATIVE_RATE = 0.25
CONFOUNDER_RATE = 0.15
# Chance that each osteoporosis variable is missing from the header.
MISSING_RATES: Mapping[str, float] = MappingProxyType(
    {"age": 0.03, "sex": 0.02, "height": 0.12, "weight": 0.10}
)

_MULTIMODAL_PURPOSE = 6001
_OSTEOPOROSIS_PURPOSE = 6002

# Demographics by label: (age mean, age sd, age low, age high), P(female), (BMI mean, sd).
_People = tuple[tuple[float, float, int, int], float, tuple[float, float]]
_MULTIMODAL_PEOPLE: Mapping[str, _People] = {
    "normal": ((50.0, 17.0, 18, 90), 0.50, (26.0, 4.0)),
    "osteoarthritis": ((67.0, 9.0, 40, 95), 0.60, (29.0, 4.5)),
    "osteonecrosis_of_femoral_head": ((42.0, 10.0, 18, 80), 0.35, (25.0, 4.0)),
    "femoroacetabular_impingement": ((32.0, 8.0, 16, 60), 0.40, (24.0, 3.0)),
}
_OSTEOPOROSIS_PEOPLE: Mapping[str, _People] = {
    "osteoporosis": ((73.0, 8.0, 45, 98), 0.80, (22.5, 3.0)),
    "no_osteoporosis": ((58.0, 12.0, 25, 95), 0.45, (27.5, 4.0)),
}
# Height (mean, sd) in metres by sex.
_HEIGHT = {"F": (1.62, 0.065), "M": (1.76, 0.07)}

# Short phrases (each fits an LO) that point to a label.
_FINDINGS: Mapping[str, tuple[str, ...]] = {
    "normal": (
        "minor fall, no bony tenderness, exclude fracture",
        "muscular groin strain, reassurance",
        "hip pain resolving, full range of movement",
        "atypical hip pain, normal examination",
        "exclude bony pathology, symptoms mild",
    ),
    "osteoarthritis": (
        "progressive groin pain and stiffness",
        "?osteoarthritis",
        "known OA, assess progression",
        "reduced internal rotation, crepitus, ?degenerative",
        "pain worse at end of day, limp, consider THR referral",
        "morning stiffness, night pain, ?OA hip",
    ),
    "osteonecrosis_of_femoral_head": (
        "long-term steroid use, hip pain, rule out AVN",
        "?avascular necrosis femoral head",
        "high-dose corticosteroids for SLE, query osteonecrosis",
        "alcohol excess, deep groin pain, ?AVN",
        "sickle cell disease, hip pain, exclude osteonecrosis",
        "post renal transplant on prednisolone, ?AVN",
    ),
    "femoroacetabular_impingement": (
        "groin pain on internal rotation, suspected FAI",
        "positive FADIR test, ?cam lesion",
        "footballer, pain on flexion and internal rotation, ?FAI",
        "clicking and catching, ?labral tear, ?impingement",
        "?pincer impingement, young athlete",
        "anterior hip pain with sport, ?femoroacetabular impingement",
    ),
}
_UNINFORMATIVE: tuple[str, ...] = (
    "hip pain",
    "pain",
    "hip pain, please assess",
    "pre-operative assessment",
    "follow-up",
    "as per clinic",
    "pain on walking",
    "?pathology",
)
_PROCEDURES: tuple[str, ...] = ("XR PELVIS AP", "XR HIP AP AND LATERAL", "XR PELVIS AND HIP")
_DIAGNOSES: tuple[str, ...] = ("Fall at home", "Hip pain", "Reduced mobility")

_RISK_FACTORS: tuple[str, ...] = (
    "previous wrist fracture",
    "vertebral compression fracture",
    "long-term glucocorticoids",
    "early menopause",
    "rheumatoid arthritis",
    "current smoker",
    "parental hip fracture",
    "low-trauma fall",
    "anorexia nervosa in youth",
)
_OTHER_HISTORY: tuple[str, ...] = (
    "hypertension",
    "type 2 diabetes",
    "hypercholesterolaemia",
    "asthma",
    "osteoarthritis of the knee",
    "appendicectomy",
    "atrial fibrillation",
)
# Chance of each risk factor being listed, by label.
_RISK_RATE = {"osteoporosis": 0.20, "no_osteoporosis": 0.05}
_OSTEOPOROSIS_REASONS: Mapping[str, tuple[str, ...]] = {
    "osteoporosis": (
        "fall from standing height, hip pain",
        "low-trauma fall, exclude fracture",
        "bone health assessment",
        "hip pain",
    ),
    "no_osteoporosis": (
        "hip pain",
        "hip pain after sport",
        "bone health assessment",
        "fall from standing height, hip pain",
    ),
}


@dataclass(frozen=True)
class ClinicalPhantom:
    """One synthetic patient's clinical context and the label it was drawn for.

    ``texts`` maps attribute keywords (REQUEST_KEYWORDS, STUDY_KEYWORDS) to their text.
    ``informative`` says whether the text points to ``label`` (a confounded text still
    does; an uninformative or absent one does not). A demographic that is None is left
    out of the header. ``birth_offset_days`` (0-364) places the birthday before the study
    date, so the birth date agrees with the age.
    """

    label: str
    texts: Mapping[str, str]
    informative: bool
    age_years: int | None
    sex: str | None
    height_m: float | None
    weight_kg: float | None
    birth_offset_days: int = 0
    confounded: bool = False

    @property
    def variables(self) -> ClinicalVariables:
        """The variables the header carries, as :mod:`dicom_node.clinical` reads them."""
        return ClinicalVariables.from_values(
            None if self.age_years is None else float(self.age_years),
            self.sex,
            self.height_m,
            self.weight_kg,
        )

    @property
    def text(self) -> str:
        """The clinical text of the fragment, as the engines see it (without StudyDescription)."""
        return text_from_dataset(self.fragment()).text

    def birth_date(self, study_date: dt.date) -> dt.date | None:
        if self.age_years is None:
            return None
        try:
            anniversary = study_date.replace(year=study_date.year - self.age_years)
        except ValueError:  # 29 February in a year without it
            anniversary = study_date.replace(year=study_date.year - self.age_years, day=28)
        return anniversary - dt.timedelta(days=self.birth_offset_days)

    def fragment(self, study_date: dt.date | None = None) -> Dataset:
        """The attributes to stamp onto every instance of the study (a fresh Dataset).

        PatientSex is empty when sex is missing (Type 2); PatientAge, PatientSize and
        PatientWeight are absent when missing (Type 3). PatientBirthDate is set when
        ``study_date`` is given: consistent with the age, or empty without one.
        """
        ds = Dataset()
        if self.age_years is not None:
            ds.PatientAge = f"{self.age_years:03d}Y"
        ds.PatientSex = self.sex or ""
        if self.height_m is not None:
            ds.PatientSize = f"{self.height_m:.2f}"
        if self.weight_kg is not None:
            ds.PatientWeight = f"{self.weight_kg:.1f}"
        if study_date is not None:
            birth = self.birth_date(study_date)
            ds.PatientBirthDate = "" if birth is None else birth.strftime("%Y%m%d")
        request = [keyword for keyword in REQUEST_KEYWORDS if keyword in self.texts]
        if request:
            item = Dataset()
            for keyword in request:
                setattr(item, keyword, self.texts[keyword])
            ds.RequestAttributesSequence = DicomSequence([item])
        for keyword in STUDY_KEYWORDS:
            if keyword in self.texts:
                setattr(ds, keyword, self.texts[keyword])
        return ds

    def stamp(self, ds: Dataset) -> Dataset:
        """Write the fragment onto ``ds`` (in place, returned), replacing what was there.

        The birth date follows ``ds``'s StudyDate when it has one; demographics and texts
        the case lacks are removed from ``ds`` (PatientSex and PatientBirthDate emptied).
        """
        study_date = _study_date(ds)
        fragment = self.fragment(study_date)
        for keyword in (
            "PatientAge",
            "PatientSize",
            "PatientWeight",
            "RequestAttributesSequence",
            *STUDY_KEYWORDS,
        ):
            if keyword in ds and keyword not in fragment:
                delattr(ds, keyword)
        if study_date is None and "PatientBirthDate" in ds:
            ds.PatientBirthDate = ""
        ds.update(fragment)
        return ds


def _study_date(ds: Dataset) -> dt.date | None:
    value = str(ds.get("StudyDate", "") or "")
    try:
        return dt.datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        return None


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _person(rng: np.random.Generator, people: _People) -> tuple[int, str, float, float]:
    (mean, sd, low, high), female, (bmi_mean, bmi_sd) = people
    age = int(np.clip(round(rng.normal(mean, sd)), low, high))
    sex = "F" if rng.random() < female else "M"
    height_mean, height_sd = _HEIGHT[sex]
    height = round(float(np.clip(rng.normal(height_mean, height_sd), 1.40, 2.05)), 2)
    bmi = float(np.clip(rng.normal(bmi_mean, bmi_sd), 16.0, 45.0))
    weight = round(bmi * height**2, 1)
    return age, sex, height, weight


def _age_phrase(rng: np.random.Generator, age: int, sex: str) -> str:
    word = {"F": "woman", "M": "man"}[sex]
    forms = (f"{age} y/o {sex}", f"{age}yo {sex}", f"{age}-year-old {word}", f"{sex}, {age}")
    return _pick(rng, forms)


_SIDE_FORMS = ("right", "left", "R", "L", "bilateral")
# The wording of a side the caller names: the drawn form's style (word or letter) kept.
_SIDE_WORDS = {"R": ("right", "R"), "L": ("left", "L"), "B": ("bilateral", "bilateral")}


def _side(rng: np.random.Generator, side: str | None = None) -> str:
    """The side phrase: drawn at random, or naming ``side`` (R, L, B) in the drawn style.

    The draw happens either way, so naming a side changes nothing else a seed gives.
    """
    drawn = _pick(rng, _SIDE_FORMS)
    if side is None:
        return drawn
    word, letter = _SIDE_WORDS[side]
    return letter if drawn in ("R", "L") else word


def multimodal_case(
    label: str,
    seed: int,
    side: str | None = None,
    *,
    person: tuple[int | None, str | None] | None = None,
    always_text: bool = False,
) -> ClinicalPhantom:
    """A request text and demographics for a study of ``label`` (one of MULTIMODAL_CLASSES).

    The history names a hip: ``side`` (R, L or B for both) when given, as a study whose
    images show that hip would; otherwise a random one, which is how training draws it
    (its inputs are all in the right hip's pose, so the side word carries nothing there).
    ``person`` (age, sex) is the patient the text speaks of when the header already
    names one (no age phrase when either is unknown); ``always_text`` skips the draw of
    no text at all (an uninformative text instead). Neither changes any other draw.
    """
    index = check_choice("label", label, MULTIMODAL_CLASSES)
    seed = check_seed(seed)
    if side is not None:
        check_choice("side", side, tuple(_SIDE_WORDS))
    rng = np.random.default_rng([seed, _MULTIMODAL_PURPOSE, index])
    age, sex, height, weight = _person(rng, _MULTIMODAL_PEOPLE[label])
    offset = int(rng.integers(365))
    kind = rng.random()
    texts: dict[str, str] = {}
    informative = confounded = False
    if kind >= NO_TEXT_RATE or always_text:
        texts["RequestedProcedureDescription"] = _pick(rng, _PROCEDURES)
        if kind < NO_TEXT_RATE + UNINFORMATIVE_RATE:
            reason = _pick(rng, _UNINFORMATIVE)
        else:
            informative = True
            reason = _pick(rng, _FINDINGS[label])
        said = person if person is not None else (age, sex)
        phrase = _age_phrase(rng, said[0] or age, said[1] or sex)  # drawn either way
        phrases = [phrase] if None not in said else []
        phrases.append(f"{_side(rng, side)} hip")
        if informative and rng.random() < CONFOUNDER_RATE:
            confounded = True
            others = [other for other in MULTIMODAL_CLASSES if other not in (label, "normal")]
            phrases.append(f"history: {_pick(rng, _FINDINGS[_pick(rng, others)])}")
        if rng.random() < 0.2:
            reason = reason.upper()
        texts["ReasonForTheRequestedProcedure"] = reason
        texts["AdditionalPatientHistory"] = ". ".join(phrases)
        if rng.random() < 0.1:
            texts["AdmittingDiagnosesDescription"] = _pick(rng, _DIAGNOSES)
    return ClinicalPhantom(
        label=label,
        texts=MappingProxyType(texts),
        informative=informative,
        age_years=age,
        sex=sex,
        height_m=height,
        weight_kg=weight,
        birth_offset_days=offset,
        confounded=confounded,
    )


def osteoporosis_case(label: str, seed: int) -> ClinicalPhantom:
    """Demographics and a medical history for a patient of ``label`` (OSTEOPOROSIS_CLASSES).

    ``informative`` is True when the history lists at least one risk factor.
    """
    index = check_choice("label", label, OSTEOPOROSIS_CLASSES)
    seed = check_seed(seed)
    rng = np.random.default_rng([seed, _OSTEOPOROSIS_PURPOSE, index])
    age, sex, height, weight = _person(rng, _OSTEOPOROSIS_PEOPLE[label])
    offset = int(rng.integers(365))
    gone = {name: bool(rng.random() < rate) for name, rate in MISSING_RATES.items()}
    risks = [risk for risk in _RISK_FACTORS if rng.random() < _RISK_RATE[label]]
    if sex == "M":
        risks = [risk for risk in risks if risk != "early menopause"]
    others = [item for item in _OTHER_HISTORY if rng.random() < 0.15]
    history = [*risks, *others]
    rng.shuffle(history)
    texts: dict[str, str] = {
        "ReasonForTheRequestedProcedure": _pick(rng, _OSTEOPOROSIS_REASONS[label]),
        "RequestedProcedureDescription": _pick(rng, _PROCEDURES),
    }
    if history:
        texts["AdditionalPatientHistory"] = "Medical history: " + ", ".join(history)
    elif rng.random() < 0.5:
        texts["AdditionalPatientHistory"] = "No significant past medical history"
    return ClinicalPhantom(
        label=label,
        texts=MappingProxyType(texts),
        informative=bool(risks),
        age_years=None if gone["age"] else age,
        sex=None if gone["sex"] else sex,
        height_m=None if gone["height"] else height,
        weight_kg=None if gone["weight"] else weight,
        birth_offset_days=offset,
    )
