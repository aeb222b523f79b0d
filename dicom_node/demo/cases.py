"""The demo's phantom studies: a handful of cases a hip reading list would see.

Each case is drawn by the phantom generator with a fixed seed and written as a
DX study (an AP pelvis, plus the lateral of a failing THA), with the ground
truth kept beside it so the report can show what the engines should have found.
Every case carries a patient drawn for a bone status (bone density in the picture;
age, sex, size and weight in the header, each as the phantom's clinical draw gives
it: some are missing, as in real headers, so case 2's osteoporotic patient, whose
sex is not given, is not one the osteoporosis engine reads, and the report says
so); two cases add a CT series of the right hip and a request text, so the
multimodal engine runs too. Seeds are fixed and were not chosen for the engines'
answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_node.synthetic import write
from engines.phantoms.clinical import ClinicalPhantom, multimodal_case, osteoporosis_case
from engines.phantoms.ct import ct_hip, write_ct_study_series
from engines.phantoms.osteoporosis import bone_factor
from engines.phantoms.studies import PhantomStudy, write_study


@dataclass(frozen=True)
class Case:
    name: str
    right: str
    left: str
    failure: Mapping[str, str] = field(default_factory=dict)
    transfer_syntax: str = ExplicitVRLittleEndian
    bone: str = "no_osteoporosis"  # the patient's bone status (osteoporosis engine)
    ct: str | None = None  # the right hip's CT shows this (multimodal engine), else no CT
    request: str | None = None  # the request text points to this (multimodal classes)
    request_side: str = "R"  # the hip the request names: the one the CT shows


@dataclass(frozen=True)
class DemoStudy:
    """A written case: the radiograph study, every file to send, the ground truth."""

    study: PhantomStudy
    files: tuple[Path, ...]
    case: Case
    patient: ClinicalPhantom  # what the header says of the patient


CASES = (
    Case("normal", "normal", "normal"),
    Case(
        "neck-fracture",
        "femoral_neck_fracture",
        "normal",
        transfer_syntax=JPEG2000Lossless,
        bone="osteoporosis",
    ),
    Case(
        "osteoarthritis",
        "osteoarthritis",
        "osteoarthritis",
        transfer_syntax=JPEGLSLossless,
        ct="osteoarthritis",
        request="osteoarthritis",
    ),
    Case(
        "tha-loosening",
        "normal",
        "total_hip_arthroplasty",
        {"L": "aseptic_loosening"},
        transfer_syntax=RLELossless,
    ),
    Case(
        "tha-dislocation",
        "total_hip_arthroplasty",
        "normal",
        {"R": "dislocation"},
        bone="osteoporosis",
    ),
    # Impingement shows on CT and in the request, not on the AP radiograph.
    Case(
        "impingement",
        "normal",
        "normal",
        ct="femoroacetabular_impingement",
        request="femoroacetabular_impingement",
    ),
)
SEED = 20_261_122
SIZE = 256  # pixels per hip region: a 256 x 512 AP pelvis


def truth(written: DemoStudy) -> str:
    study, case = written.study, written.case
    parts = []
    for side in ("R", "L"):
        label = study.labels[side].replace("_", " ")
        failure = study.labels.get(f"{side}_failure")
        parts.append(f"{side} {label}" + (f" ({failure.replace('_', ' ')})" if failure else ""))
    extra = [f"bone: {case.bone.replace('_', ' ')}"]
    if written.patient.age_years is None or written.patient.sex is None:
        extra[0] += " (age or sex not in the header: not for the osteoporosis engine)"
    if case.ct:
        extra.append(f"CT of R: {case.ct.replace('_', ' ')}")
    return ", ".join(parts) + "; " + "; ".join(extra)


def _write(folder: Path, seed: int, case: Case) -> DemoStudy:
    study = write_study(
        folder, seed, case.right, case.left, failure=case.failure, size=SIZE,
        transfer_syntax=case.transfer_syntax, bone=bone_factor(case.bone, seed),
    )  # fmt: skip
    clinical = osteoporosis_case(case.bone, seed)
    if case.request:  # about this patient, and always a text (the case is there to show it)
        person = (clinical.age_years, clinical.sex)
        request = multimodal_case(
            case.request, seed, case.request_side, person=person, always_text=True
        )
        clinical = replace(clinical, texts=request.texts)
    files = list(study.files)
    if case.ct:
        files += write_ct_study_series(folder, ct_hip(case.ct, seed), study.identity)
    for path in files:  # the CT too: one patient, one request, in every header
        write(clinical.stamp(pydicom.dcmread(path)), path)
    return DemoStudy(study, tuple(files), case, clinical)


def write_cases(folder: Path) -> list[DemoStudy]:
    return [
        _write(folder / f"{n}-{case.name}", SEED + n, case) for n, case in enumerate(CASES, start=1)
    ]
