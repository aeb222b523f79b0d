"""Synthetic clinical context: deterministic, DICOM-consistent, and shifted by label.

The distribution checks use 300 seeds per label; their margins are several standard
errors wide, and the draws are seeded, so they never flake.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.clinical import text_from_dataset, variables_from_dataset
from dicom_node.synthetic import StudyIdentity, make_dx
from engines.phantoms import PhantomError
from engines.phantoms.clinical import (
    LO_MAX,
    MULTIMODAL_CLASSES,
    OSTEOPOROSIS_CLASSES,
    ClinicalPhantom,
    multimodal_case,
    osteoporosis_case,
)

SEEDS = range(300)
# Wording that points to each multimodal label.
CUES = {
    "osteoarthritis": re.compile(r"\bOA\b|osteoarthritis|degenerative|stiffness|THR", re.I),
    "osteonecrosis_of_femoral_head": re.compile(r"AVN|osteonecrosis|avascular|steroid", re.I),
    "femoroacetabular_impingement": re.compile(r"FAI|impingement|FADIR|cam|pincer|labral", re.I),
}


@functools.cache
def texts_of(label: str) -> tuple[str, ...]:
    return tuple(multimodal_case(label, seed).text for seed in SEEDS)


def cue_rate(label: str, cue: str) -> float:
    texts = texts_of(label)
    return float(np.mean([bool(CUES[cue].search(text)) for text in texts]))


def test_deterministic() -> None:
    for label in MULTIMODAL_CLASSES:
        assert multimodal_case(label, 5) == multimodal_case(label, 5)
    for label in OSTEOPOROSIS_CLASSES:
        assert osteoporosis_case(label, 5) == osteoporosis_case(label, 5)
    assert multimodal_case("normal", 5).fragment(dt.date(2024, 5, 1)) == multimodal_case(
        "normal", 5
    ).fragment(dt.date(2024, 5, 1))
    texts = {multimodal_case("osteoarthritis", seed).text for seed in range(40)}
    assert len(texts) > 20  # seeds differ


@pytest.mark.parametrize("label", MULTIMODAL_CLASSES)
def test_multimodal_text_shares(label: str) -> None:
    cases = [multimodal_case(label, seed) for seed in SEEDS]
    no_text = np.mean([not case.texts for case in cases])
    informative = np.mean([case.informative for case in cases])
    assert 0.05 < no_text < 0.16
    assert 0.55 < informative < 0.75
    assert all(case.label == label for case in cases)
    assert all(case.text == "" for case in cases if not case.texts)
    assert all(not case.confounded or case.informative for case in cases)
    assert 0.04 < np.mean([case.confounded for case in cases]) < 0.2


@pytest.mark.parametrize("cue", sorted(CUES))
def test_multimodal_wording_is_label_informative_but_noisy(cue: str) -> None:
    own = cue_rate(cue, cue)
    assert 0.45 < own < 0.8  # noisy: not every text of the label says so
    for other in MULTIMODAL_CLASSES:
        if other != cue:
            assert cue_rate(other, cue) < own - 0.3


def test_multimodal_demographics_follow_the_label() -> None:
    def mean_age(label: str) -> float:
        ages = [multimodal_case(label, seed).age_years for seed in SEEDS]
        return float(np.mean([age for age in ages if age is not None]))

    assert mean_age("osteoarthritis") > mean_age("osteonecrosis_of_femoral_head") + 15
    assert mean_age("osteonecrosis_of_femoral_head") > mean_age("femoroacetabular_impingement")
    case = multimodal_case("femoroacetabular_impingement", 3)
    assert case.sex is not None and case.age_years is not None
    # The text's stated age and sex, when given, are the header's.
    for seed in SEEDS:
        case = multimodal_case("osteoarthritis", seed)
        history = case.texts.get("AdditionalPatientHistory", "")
        if history:
            assert str(case.age_years) in history


def test_osteoporosis_distributions_shift_with_the_label() -> None:
    def stats(label: str) -> tuple[float, float, float, float]:
        variables = [osteoporosis_case(label, seed).variables for seed in SEEDS]
        ages = [v.age_years for v in variables if v.age_years is not None]
        female = [v.sex == "F" for v in variables if v.sex is not None]
        bmi = [v.bmi for v in variables if v.bmi is not None]
        risk = [osteoporosis_case(label, seed).informative for seed in SEEDS]
        return (
            float(np.mean(ages)),
            float(np.mean(female)),
            float(np.mean(bmi)),
            float(np.mean(risk)),
        )

    age_yes, female_yes, bmi_yes, risk_yes = stats("osteoporosis")
    age_no, female_no, bmi_no, risk_no = stats("no_osteoporosis")
    assert age_yes > age_no + 8
    assert female_yes > female_no + 0.2
    assert bmi_yes < bmi_no - 3
    assert risk_yes > risk_no + 0.4
    # ...but the classes overlap: no variable separates them alone.
    assert female_no > 0.3 and age_no > 50 and bmi_yes > 20


def test_osteoporosis_variables_sometimes_missing() -> None:
    cases = [osteoporosis_case(label, seed) for label in OSTEOPOROSIS_CLASSES for seed in SEEDS]
    missing = {
        "age": np.mean([c.age_years is None for c in cases]),
        "sex": np.mean([c.sex is None for c in cases]),
        "height": np.mean([c.height_m is None for c in cases]),
        "weight": np.mean([c.weight_kg is None for c in cases]),
    }
    assert 0.005 < missing["age"] < 0.07
    assert 0.0 < missing["sex"] < 0.06
    assert 0.07 < missing["height"] < 0.18
    assert 0.05 < missing["weight"] < 0.16
    complete = np.mean([c.variables.complete_enough() for c in cases])
    assert 0.7 < complete < 0.85
    # Every present value is plausible: nothing is flagged invalid.
    assert all(c.variables.invalid == () for c in cases)


def test_osteoporosis_history_text() -> None:
    case = next(c for c in (osteoporosis_case("osteoporosis", s) for s in SEEDS) if c.informative)
    assert case.texts["AdditionalPatientHistory"].startswith("Medical history: ")
    males = [osteoporosis_case("osteoporosis", s) for s in SEEDS]
    assert not any("menopause" in c.text for c in males if c.sex == "M")


def all_cases() -> list[ClinicalPhantom]:
    return [multimodal_case(label, seed) for label in MULTIMODAL_CLASSES for seed in range(60)] + [
        osteoporosis_case(label, seed) for label in OSTEOPOROSIS_CLASSES for seed in range(60)
    ]


def test_fragment_reads_back_as_the_case() -> None:
    study_date = dt.date(2024, 2, 29)
    for case in all_cases():
        ds = case.fragment(study_date)
        variables = variables_from_dataset(ds)
        assert variables == case.variables
        assert text_from_dataset(ds).text == case.text
        assert ds.PatientSex == (case.sex or "")
        if case.age_years is None:
            assert "PatientAge" not in ds and ds.PatientBirthDate == ""
        else:
            # The birth date agrees with the stated age.
            del ds.PatientAge
            ds.StudyDate = "20240229"
            from_dates = variables_from_dataset(ds).age_years
            assert from_dates is not None and int(from_dates) == case.age_years
        for keyword in ("ReasonForTheRequestedProcedure", "RequestedProcedureDescription"):
            assert len(case.texts.get(keyword, "")) <= LO_MAX
        if "ReasonForTheRequestedProcedure" in case.texts:
            item = ds.RequestAttributesSequence[0]
            assert (
                item.ReasonForTheRequestedProcedure == case.texts["ReasonForTheRequestedProcedure"]
            )
    assert "PatientBirthDate" not in multimodal_case("normal", 1).fragment()


def test_stamp_onto_a_factory_instance() -> None:
    identity = StudyIdentity.synthetic(7)
    ds = make_dx(np.zeros((64, 64), dtype=np.uint16), identity=identity, view="AP", laterality="B")
    assert "PatientWeight" in ds
    missing_weight = next(
        c
        for c in (osteoporosis_case("no_osteoporosis", s) for s in SEEDS)
        if c.weight_kg is None and c.height_m is not None
    )
    missing_weight.stamp(ds)
    assert "PatientWeight" not in ds
    assert ds.PatientSize == f"{missing_weight.height_m:.2f}"
    assert ds.StudyDescription == identity.study_description  # the study's own text stays
    variables = variables_from_dataset(ds)
    assert variables == missing_weight.variables
    text = text_from_dataset(ds)
    assert text.text.startswith(missing_weight.text.rstrip("."))
    assert text.sources[-1] == "StudyDescription"
    birth = dt.datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date()
    assert birth == missing_weight.birth_date(identity.study_date)

    no_text = next(c for c in (multimodal_case("normal", s) for s in SEEDS) if not c.texts)
    no_text.stamp(ds)
    assert "RequestAttributesSequence" not in ds and "AdditionalPatientHistory" not in ds
    assert text_from_dataset(ds).sources == ("StudyDescription",)

    bare = Dataset()
    bare.PatientBirthDate = "19500101"
    no_text.stamp(bare)  # no study date: the birth date cannot be kept consistent
    assert bare.PatientBirthDate == ""


def test_a_named_side_is_the_hip_the_history_names_and_changes_nothing_else() -> None:
    words = {"R": ("right hip", "R hip"), "L": ("left hip", "L hip"), "B": ("bilateral hip",)}
    for seed in range(40):
        free = multimodal_case("femoroacetabular_impingement", seed)
        for side, phrases in words.items():
            named = multimodal_case("femoroacetabular_impingement", seed, side)
            if "AdditionalPatientHistory" not in free.texts:  # no text drawn: none named
                assert named == free
                continue
            history = named.texts["AdditionalPatientHistory"]
            assert any(phrase in history for phrase in phrases), history
            # Only the side phrase differs: same patient, reason and the rest of the history.
            pattern = r"\b(right|left|R|L|bilateral) hip"
            assert re.sub(pattern, "<side> hip", history) == re.sub(
                pattern, "<side> hip", free.texts["AdditionalPatientHistory"]
            )
            others = {k: v for k, v in named.texts.items() if k != "AdditionalPatientHistory"}
            assert others == {k: v for k, v in free.texts.items() if k in others}
            assert (named.age_years, named.sex) == (free.age_years, free.sex)


def test_errors() -> None:
    with pytest.raises(PhantomError, match=r'label: expected one of \(.*\), got "fracture"'):
        multimodal_case("fracture", 0)
    with pytest.raises(PhantomError, match=r'label: expected one of \(.*\), got "osteoarthritis"'):
        osteoporosis_case("osteoarthritis", 0)
    with pytest.raises(PhantomError, match=r"seed: expected a non-negative integer, got -1"):
        multimodal_case("normal", -1)
    with pytest.raises(PhantomError, match=r"side: expected one of \('R', 'L', 'B'\), got \"X\""):
        multimodal_case("normal", 0, "X")
    with pytest.raises(PhantomError, match=r"seed: expected a non-negative integer, got 1.5"):
        osteoporosis_case("osteoporosis", 1.5)  # type: ignore[arg-type]
