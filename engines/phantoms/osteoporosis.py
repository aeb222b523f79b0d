"""Osteoporosis phantoms: a normal AP hip region whose bone is less dense under osteoporosis.

Osteoporosis lowers bone mineral density, which a radiograph shows as less attenuating
(darker) bone. The phantom is the screening engine's normal hip with the patient's bone
attenuation scaled by a factor drawn per case: 0.62-0.85 under osteoporosis, 0.92-1.08
otherwise. The patients' own spread of bone attenuation (0.85-1.15) makes the two classes
overlap a little, as densities do in real populations, so the clinical variables of
:func:`engines.phantoms.clinical.osteoporosis_case` add information the image lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from engines.models.hip_screen import SCREEN_CLASSES
from engines.phantoms.anatomy import sample_hip, sample_patient
from engines.phantoms.phantom import Phantom, Streams, check_choice, check_seed, check_size
from engines.phantoms.screen import HIP, PATIENT, render_screen

# The density stream: a purpose of its own, so the label changes only the bone factor.
DENSITY = 11
# Range of the factor on the patient's bone attenuation, by label (the engine's classes,
# engines.models.osteoporosis.OSTEOPOROSIS_CLASSES).
BONE_FACTOR: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"no_osteoporosis": (0.92, 1.08), "osteoporosis": (0.62, 0.85)}
)


def bone_factor(label: str, seed: int) -> float:
    """The factor ``osteoporosis_hip(label, seed)`` scales the bone attenuation by."""
    check_choice("label", label, tuple(BONE_FACTOR))
    low, high = BONE_FACTOR[label]
    # One draw from a stream keyed by the seed alone: the factor's rank within its range
    # is the same for both labels of one seed.
    return float(low + (high - low) * Streams(check_seed(seed)).get(DENSITY).random())


def osteoporosis_hip(label: str, seed: int, size: int = 256) -> Phantom:
    """One normal hip region (right hip, canonical orientation) of a patient with or without
    osteoporosis (``label`` in OSTEOPOROSIS_CLASSES); the mask is empty (no focal lesion).

    The same seed gives the same patient, hip, positioning and noise whatever the label;
    the two labels differ only in how dense the bone is.
    """
    factor = bone_factor(label, seed)
    streams = Streams(seed)
    size = check_size(size)
    patient = sample_patient(streams.get(PATIENT))
    patient = replace(patient, look=replace(patient.look, bone=patient.look.bone * factor))
    normal = SCREEN_CLASSES.index("normal")
    drawn = render_screen(
        normal, patient, sample_hip(streams.get(HIP)), patient.pose, size, streams
    )
    return replace(drawn, label=label)
