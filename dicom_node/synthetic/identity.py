"""Who and what a synthetic study is about: the patient and study identity."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from pydicom.uid import generate_uid

from dicom_node.errors import FactoryError

_SEXES = ("F", "M", "O")


def _length(text: str) -> int:
    """The value's length as the factory writes it: UTF-8 bytes (ASCII: its characters)."""
    return len(text.encode("utf-8"))


@dataclass(frozen=True)
class StudyIdentity:
    """Patient and study attributes shared by every instance of one synthetic study."""

    patient_name: str
    patient_id: str
    birth_date: dt.date
    sex: str
    study_uid: str
    accession_number: str
    study_id: str
    study_date: dt.date
    study_time: dt.time
    study_description: str
    referring_physician: str
    age_years: int | None = None
    size_m: float | None = None
    weight_kg: float | None = None

    def __post_init__(self) -> None:
        if self.sex not in _SEXES:
            raise FactoryError(f'sex: expected one of {_SEXES}, got "{self.sex}"')
        # Value lengths as written: in UTF-8 (ISO_IR 192, for non-ASCII text) a character
        # may take several bytes, and dciodvfy counts bytes.
        if not self.patient_id or _length(self.patient_id) > 64:
            raise FactoryError(f'patient_id: expected 1-64 characters, got "{self.patient_id}"')
        if _length(self.accession_number) > 16:
            raise FactoryError(
                f'accession_number: expected at most 16 characters, got "{self.accession_number}"'
            )
        if _length(self.study_id) > 16:
            raise FactoryError(f'study_id: expected at most 16 characters, got "{self.study_id}"')
        # PN: 64 characters per component group; LO: 64 (longer values fail dciodvfy).
        for key in ("patient_name", "referring_physician"):
            value = getattr(self, key)
            if any(_length(group) > 64 for group in value.split("=")):
                raise FactoryError(
                    f'{key}: expected at most 64 characters per component group, got "{value}"'
                )
        if _length(self.study_description) > 64:
            raise FactoryError(
                f'study_description: expected at most 64 characters, got "{self.study_description}"'
            )
        if self.age_years is not None and not 0 <= self.age_years <= 999:
            raise FactoryError(f"age_years: expected 0-999, got {self.age_years}")
        if self.size_m is not None and not self.size_m > 0:
            raise FactoryError(f"size_m: expected a positive height, got {self.size_m}")
        if self.weight_kg is not None and not self.weight_kg > 0:
            raise FactoryError(f"weight_kg: expected a positive weight, got {self.weight_kg}")

    @property
    def is_ascii(self) -> bool:
        """Are all its texts ASCII (the default character repertoire)? Otherwise the
        instances declare UTF-8 (ISO_IR 192)."""
        texts = (self.patient_name, self.patient_id, self.accession_number, self.study_id,
                 self.study_description, self.referring_physician)  # fmt: skip
        return all(text.isascii() for text in texts)

    @property
    def patient_age(self) -> str | None:
        """The age as a DICOM AS value ("067Y"), or None when unknown."""
        return None if self.age_years is None else f"{self.age_years:03d}Y"

    @classmethod
    def synthetic(cls, seed: int) -> StudyIdentity:
        """A plausible, clearly synthetic identity; the same seed always gives the same one."""
        if seed < 0:
            raise FactoryError(f"seed: expected a non-negative integer, got {seed}")
        rng = random.Random(seed)
        study_date = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(366))
        age = rng.randrange(20, 95)
        birth_date = study_date.replace(year=study_date.year - age, day=1) - dt.timedelta(
            days=rng.randrange(1, 300)
        )
        # Age in whole years at the study date, as a modality would compute it.
        age_years = (
            study_date.year
            - birth_date.year
            - ((study_date.month, study_date.day) < (birth_date.month, birth_date.day))
        )
        return cls(
            patient_name=f"PHANTOM^HIP{seed:03d}",
            patient_id=f"PHANTOM-{seed:06d}",
            birth_date=birth_date,
            sex=rng.choice(("F", "M")),
            study_uid=generate_uid(entropy_srcs=["dicom-node-synthetic", "study", str(seed)]),
            accession_number=f"SYN{seed:08d}"[:16],
            study_id=f"S{seed}"[:16],
            study_date=study_date,
            study_time=dt.time(rng.randrange(7, 19), rng.randrange(60), rng.randrange(60)),
            study_description="XR HIP PHANTOM (SYNTHETIC)",
            referring_physician="PHANTOM^REFERRER",
            age_years=age_years,
            size_m=round(rng.uniform(1.50, 1.95), 2),
            weight_kg=round(rng.uniform(45.0, 110.0), 1),
        )
