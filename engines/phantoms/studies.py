"""Phantom studies on disk: an AP pelvis and, for a failing THA, a lateral of that hip.

The DICOM objects come from the synthetic factory (:mod:`dicom_node.synthetic`), so they
pass dciodvfy like every other synthetic object; the pixels are the phantoms, stored
with 12 bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.synthetic import StudyIdentity, make_dx, write
from engines.models.hipnet import FAILURE_CLASSES
from engines.phantoms.pelvis import SIDES, draw_pelvis_study
from engines.phantoms.phantom import (
    PhantomError,
    check_failure_label,
    check_screen_label,
    check_seed,
    check_size,
)
from engines.phantoms.prosthesis import render_prosthesis

BITS_STORED = 12
REGION_MM = 200.0  # a hip region spans about 20 cm of the patient
THA = "total_hip_arthroplasty"


@dataclass(frozen=True)
class PhantomStudy:
    """What :func:`write_study` wrote and the ground truth it was drawn with.

    ``labels`` maps "R" and "L" to the screening label of each hip, plus "R_failure" or
    "L_failure" for a THA hip drawn with a failure.
    """

    identity: StudyIdentity
    files: tuple[Path, ...]
    labels: Mapping[str, str]


def _stored(image: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    top = (1 << BITS_STORED) - 1
    return np.rint(np.clip(image, 0.0, 1.0) * top).astype(np.uint16)


def write_study(
    out_dir: Path,
    seed: int,
    right: str,
    left: str,
    failure: Mapping[str, str] | None = None,
    size: int = 512,
    transfer_syntax: str = ExplicitVRLittleEndian,
    bone: float = 1.0,
) -> PhantomStudy:
    """Write one phantom study into ``out_dir``: an AP pelvis, plus a lateral per failing THA.

    ``size`` is the side of one hip region (the pelvis is size x 2*size). A side named in
    ``failure`` ({"R": "aseptic_loosening"}) must have the label total_hip_arthroplasty;
    its hip shows that failure on the AP pelvis and on its own lateral. ``bone`` scales the
    bone attenuation (engines.phantoms.osteoporosis.bone_factor gives one per label).
    """
    if isinstance(bone, bool) or not isinstance(bone, int | float) or not 0.3 <= bone <= 1.5:
        raise PhantomError(f"bone: expected a factor from 0.3 to 1.5, got {bone!r}")
    check_screen_label(right, "right")
    check_screen_label(left, "left")
    seed = check_seed(seed)
    size = check_size(size)
    failures = dict(failure or {})
    labels = {"R": right, "L": left}
    for side, sign in failures.items():
        if side not in SIDES:
            raise PhantomError(f'failure: expected sides {SIDES}, got "{side}"')
        check_failure_label(sign, f"failure[{side}]")
        if labels[side] != THA:
            raise PhantomError(
                f'failure[{side}]: "{sign}" needs a {THA} hip, but side {side} is "{labels[side]}"'
            )
    identity = StudyIdentity.synthetic(seed)
    spacing = (REGION_MM / size, REGION_MM / size)
    out_dir.mkdir(parents=True, exist_ok=True)
    pelvis = draw_pelvis_study(right, left, seed, size, failures, float(bone))

    def series_uid(n: int) -> str:
        # What is drawn enters too: the same seed with other labels, failures, size or bone
        # is other pixels, so other instances (not the same UIDs with different content).
        drawn = [right, left, repr(sorted(failures.items())), str(size), repr(float(bone))]
        uid: str = generate_uid(entropy_srcs=[identity.study_uid, "phantom-series", str(n), *drawn])
        return uid

    ds = make_dx(
        _stored(pelvis.image),
        identity=identity,
        view="AP",
        laterality="B",
        pixel_spacing_mm=spacing,
        bits_stored=BITS_STORED,
        series_uid=series_uid(1),
        series_number=1,
        transfer_syntax=transfer_syntax,
    )
    files = [write(ds, out_dir / "pelvis_ap.dcm")]
    for number, side in enumerate(SIDES, start=2):
        if side not in failures:
            continue
        labels[f"{side}_failure"] = failures[side]
        hip, streams = pelvis.hips[side]
        index = FAILURE_CLASSES.index(failures[side])
        lateral = render_prosthesis(index, True, pelvis.patient, hip, pelvis.pose, size, streams)
        image = lateral.image if side == "R" else np.fliplr(lateral.image)
        ds = make_dx(
            _stored(image),
            identity=identity,
            view="LATERAL",
            laterality=side,
            pixel_spacing_mm=spacing,
            bits_stored=BITS_STORED,
            series_uid=series_uid(number),
            series_number=number,
            transfer_syntax=transfer_syntax,
        )
        files.append(write(ds, out_dir / f"{side.lower()}_hip_lateral.dcm"))
    return PhantomStudy(identity=identity, files=tuple(files), labels=labels)
