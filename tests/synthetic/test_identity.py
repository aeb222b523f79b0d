from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from dicom_node.errors import FactoryError
from dicom_node.synthetic import StudyIdentity


def test_the_same_seed_gives_the_same_identity() -> None:
    assert StudyIdentity.synthetic(3) == StudyIdentity.synthetic(3)
    assert StudyIdentity.synthetic(3).study_uid != StudyIdentity.synthetic(4).study_uid


def test_synthetic_identity_is_clearly_synthetic_and_consistent() -> None:
    identity = StudyIdentity.synthetic(12)
    assert identity.patient_name == "PHANTOM^HIP012"
    assert identity.patient_id == "PHANTOM-000012"
    assert identity.sex in ("F", "M")
    assert identity.age_years is not None
    birthday = identity.birth_date.replace(year=identity.study_date.year)
    age = identity.study_date.year - identity.birth_date.year
    assert identity.age_years == (age if birthday <= identity.study_date else age - 1)
    assert identity.patient_age == f"{identity.age_years:03d}Y"
    assert len(identity.accession_number) <= 16
    assert identity.size_m is not None and 1.5 <= identity.size_m <= 1.95
    assert identity.weight_kg is not None and 45 <= identity.weight_kg <= 110


def test_identity_is_frozen() -> None:
    identity = StudyIdentity.synthetic(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.patient_id = "X"  # type: ignore[misc]


def test_optional_fields_default_to_unknown() -> None:
    base = StudyIdentity.synthetic(1)
    identity = StudyIdentity(
        patient_name=base.patient_name,
        patient_id=base.patient_id,
        birth_date=base.birth_date,
        sex="O",
        study_uid=base.study_uid,
        accession_number="",
        study_id="",
        study_date=dt.date(2024, 5, 1),
        study_time=dt.time(8, 30),
        study_description="",
        referring_physician="",
    )
    assert identity.patient_age is None
    assert identity.size_m is None and identity.weight_kg is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sex": "X"}, 'sex: expected one of .*, got "X"'),
        ({"patient_id": ""}, "patient_id: expected 1-64 characters"),
        ({"accession_number": "A" * 17}, "accession_number: expected at most 16 characters"),
        ({"study_id": "S" * 17}, "study_id: expected at most 16 characters"),
        ({"age_years": 1000}, "age_years: expected 0-999, got 1000"),
        ({"size_m": 0.0}, "size_m: expected a positive height, got 0.0"),
        ({"weight_kg": -1.0}, "weight_kg: expected a positive weight, got -1.0"),
        # Accepted, they failed dciodvfy (PN and LO hold 64 characters).
        (
            {"patient_name": "A" * 65},
            "^patient_name: expected at most 64 characters per component group",
        ),
        ({"referring_physician": "X^" + "Y" * 63}, "^referring_physician: expected at most 64"),
        ({"study_description": "D" * 65}, "^study_description: expected at most 64 characters"),
        # 61 characters, 121 bytes in UTF-8: dciodvfy counts bytes.
        ({"patient_name": "Ü" * 30 + "^" + "Ö" * 30}, "^patient_name: expected at most 64"),
        ({"study_description": "Ä" * 60}, "^study_description: expected at most 64"),
    ],
)
def test_invalid_identity_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(FactoryError, match=message):
        dataclasses.replace(StudyIdentity.synthetic(1), **change)  # type: ignore[arg-type]


def test_negative_seed_is_refused() -> None:
    with pytest.raises(FactoryError, match="seed: expected a non-negative integer, got -1"):
        StudyIdentity.synthetic(-1)
