"""The phantom record, its error and the argument checks every generator shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dicom_node.errors import DicomNodeError
from engines.models.hip_screen import SCREEN_CLASSES
from engines.models.hipnet import FAILURE_CLASSES

VIEWS: tuple[str, ...] = ("AP", "LATERAL")
MIN_SIZE = 64
MAX_SIZE = 4096


class PhantomError(DicomNodeError, ValueError):
    """A phantom generator was given a label, view, size or seed it cannot draw."""


@dataclass(frozen=True)
class Phantom:
    """One drawn radiograph region and the ground truth it was drawn with.

    ``image`` is in display sense (bone and metal bright) within [0, 1]; ``mask`` marks
    the lesion (all False for a normal hip).
    """

    image: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]
    label: str
    view: str


def check_choice(name: str, value: str, valid: Sequence[str]) -> int:
    """The index of ``value`` in ``valid``; raise with both quoted otherwise."""
    if isinstance(value, str) and value in valid:
        return list(valid).index(value)
    raise PhantomError(f'{name}: expected one of {tuple(valid)}, got "{value}"')


def check_screen_label(label: str, name: str = "label") -> int:
    return check_choice(name, label, SCREEN_CLASSES)


def check_failure_label(label: str, name: str = "label") -> int:
    return check_choice(name, label, FAILURE_CLASSES)


def check_view(view: str) -> int:
    return check_choice("view", view, VIEWS)


def check_size(size: int) -> int:
    """Raise unless ``size`` is an integer in MIN_SIZE..MAX_SIZE."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise PhantomError(f"size: expected an integer {MIN_SIZE}-{MAX_SIZE}, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise PhantomError(f"size: expected {MIN_SIZE}-{MAX_SIZE} pixels, got {size}")
    return int(size)


def check_seed(seed: int) -> int:
    """Raise unless ``seed`` is a non-negative integer (numpy's SeedSequence needs one)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise PhantomError(f"seed: expected a non-negative integer, got {seed!r}")
    return int(seed)


def stream(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator per purpose, so a label never changes the base anatomy."""
    return np.random.default_rng([seed, *keys])


@dataclass(frozen=True)
class Streams:
    """Random streams of one phantom: by purpose, then keys, then the side (hips of a pelvis)."""

    seed: int
    side: tuple[int, ...] = ()

    def get(self, purpose: int, *keys: int) -> np.random.Generator:
        return stream(self.seed, purpose, *keys, *self.side)
