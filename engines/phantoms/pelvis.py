"""The whole AP pelvis: two hip regions of one patient, joined at the midline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from engines.models.hipnet import FAILURE_CLASSES
from engines.phantoms.anatomy import Hip, Patient, sample_hip, sample_patient
from engines.phantoms.canvas import Pose
from engines.phantoms.phantom import Phantom, Streams, check_screen_label, check_seed, check_size
from engines.phantoms.prosthesis import render_prosthesis
from engines.phantoms.screen import HIP, PATIENT, render_screen
from engines.regions import join_hips

SIDES = ("R", "L")


@dataclass(frozen=True)
class Pelvis:
    """An AP pelvis and what is needed to draw more views of its hips."""

    right: Phantom
    left: Phantom
    image: npt.NDArray[np.float32]
    patient: Patient
    pose: Pose
    hips: Mapping[str, tuple[Hip, Streams]]


def ap_pelvis(
    right: str, left: str, seed: int, size: int = 256
) -> tuple[Phantom, Phantom, npt.NDArray[np.float32]]:
    """(right hip, left hip, pelvis image of shape (size, 2 * size)).

    Both hips are canonical (the left one unmirrored), so ``split_hips(pelvis)`` gives back
    their images exactly. They share the patient's habitus, exposure and midline
    (symphysis, sacrum, soft tissue) and are positioned without rotation or side shift,
    which keeps the join at the midline continuous.
    """
    check_screen_label(right, "right")
    check_screen_label(left, "left")
    p = draw_pelvis_study(right, left, check_seed(seed), check_size(size), {})
    return p.right, p.left, p.image


def draw_pelvis_study(
    right: str, left: str, seed: int, size: int, failure: Mapping[str, str], bone: float = 1.0
) -> Pelvis:
    """The AP pelvis; a side named in ``failure`` (a THA) shows that failure; ``bone``
    scales the patient's bone attenuation (below 1: less dense bone, as in osteoporosis,
    see engines.phantoms.osteoporosis).

    Labels, seed, size, failures and bone are checked by the caller.
    """
    patient = sample_patient(Streams(seed).get(PATIENT))
    patient = replace(patient, look=replace(patient.look, bone=patient.look.bone * bone))
    pose = Pose(angle=0.0, scale=patient.pose.scale, shift=(0.0, patient.pose.shift[1]))
    phantoms: list[Phantom] = []
    hips: dict[str, tuple[Hip, Streams]] = {}
    for k, (side, label) in enumerate(zip(SIDES, (right, left), strict=True)):
        streams = Streams(seed, (1 + k,))
        hip = sample_hip(streams.get(HIP))
        hips[side] = (hip, streams)
        if side in failure:
            index = FAILURE_CLASSES.index(failure[side])
            ph = render_prosthesis(index, False, patient, hip, pose, size, streams)
        else:
            ph = render_screen(check_screen_label(label), patient, hip, pose, size, streams)
        phantoms.append(ph)
    image = join_hips(phantoms[0].image, phantoms[1].image).astype(np.float32)
    return Pelvis(phantoms[0], phantoms[1], image, patient, pose, hips)
