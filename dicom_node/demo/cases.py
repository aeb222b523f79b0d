"""The demo's phantom studies: a handful of cases a hip reading list would see.

Each case is drawn by the phantom generator with a fixed seed and written as a
DX study (an AP pelvis, plus the lateral of a failing THA), with the ground
truth kept beside it so the report can show what the engines should have found.
Seeds are fixed and were not chosen for the engines' answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from engines.phantoms.studies import PhantomStudy, write_study


@dataclass(frozen=True)
class Case:
    name: str
    right: str
    left: str
    failure: Mapping[str, str] = field(default_factory=dict)
    transfer_syntax: str = ExplicitVRLittleEndian


CASES = (
    Case("normal", "normal", "normal"),
    Case("neck-fracture", "femoral_neck_fracture", "normal", transfer_syntax=JPEG2000Lossless),
    Case("osteoarthritis", "osteoarthritis", "osteoarthritis", transfer_syntax=JPEGLSLossless),
    Case(
        "tha-loosening",
        "normal",
        "total_hip_arthroplasty",
        {"L": "aseptic_loosening"},
        transfer_syntax=RLELossless,
    ),
    Case("tha-dislocation", "total_hip_arthroplasty", "normal", {"R": "dislocation"}),
)
SEED = 20_261_122
SIZE = 256  # pixels per hip region: a 256 x 512 AP pelvis


def truth(study: PhantomStudy) -> str:
    parts = []
    for side in ("R", "L"):
        label = study.labels[side].replace("_", " ")
        failure = study.labels.get(f"{side}_failure")
        parts.append(f"{side} {label}" + (f" ({failure.replace('_', ' ')})" if failure else ""))
    return ", ".join(parts)


def write_cases(folder: Path) -> list[tuple[Case, PhantomStudy]]:
    return [
        (
            case,
            write_study(
                folder / f"{n}-{case.name}",
                SEED + n,
                case.right,
                case.left,
                failure=case.failure,
                size=SIZE,
                transfer_syntax=case.transfer_syntax,
            ),
        )
        for n, case in enumerate(CASES, start=1)
    ]
