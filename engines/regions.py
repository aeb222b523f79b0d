"""Hip regions of an AP pelvis radiograph, in the canonical orientation the engines expect.

The canonical hip is the patient's right hip as an AP displays it: femoral shaft toward
column 0, the midline toward the last column, head up. The left hip is mirrored into it, so
one model sees every hip the same way round.

Which half of an image is which hip follows its Patient Orientation (0020,0020), not the
display convention alone: an image whose rows run toward the patient's right (row
direction R: a PA view, or a detector read out flipped) shows the right hip in its right
half, and one whose columns run toward the head (column direction H) is upside down.
Without an orientation (or with one that is not two directions of A, P, R, L, H, F) the AP
convention (rows toward L, columns toward F) is assumed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_node.errors import DicomNodeError


class RegionError(DicomNodeError, ValueError):
    """An image cannot be split into, or joined from, two hip regions."""


def split_hips(image: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """(right hip, left hip) of an AP pelvis (H, W), both canonical and C-contiguous.

    The right hip is the image's left half; the left hip is its right half mirrored. With
    an odd width the middle column (the midline) belongs to neither.
    """
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise RegionError(
            f"split_hips: expected a 2-D image at least 2 columns wide, got shape {arr.shape}"
        )
    half = arr.shape[1] // 2
    right = np.ascontiguousarray(arr[:, :half])
    left = np.ascontiguousarray(np.fliplr(arr[:, arr.shape[1] - half :]))
    return right, left


def join_hips(right: npt.NDArray[Any], left: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The AP pelvis from two canonical hip regions: the inverse of :func:`split_hips`."""
    r, lt = np.asarray(right), np.asarray(left)
    if r.ndim != 2 or r.shape != lt.shape:
        raise RegionError(
            f"join_hips: expected two 2-D regions of one shape, got {r.shape} and {lt.shape}"
        )
    return np.concatenate([r, np.fliplr(lt)], axis=1)


@dataclass(frozen=True)
class HipRegion:
    """Where one canonical hip region lies in its source image.

    ``columns`` is the half-open column range of the source picture; ``mirrored``
    says the region was flipped left-right to be canonical (a left hip in an AP-oriented
    image, a right hip in a flipped one); ``upside_down`` that it was flipped top-bottom.
    """

    side: str  # R or L
    rows: int
    columns: tuple[int, int]
    mirrored: bool
    upside_down: bool = False

    def cut(self, picture: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The canonical region of ``picture`` (the source image's grid), C-contiguous."""
        part = np.asarray(picture)[:, self.columns[0] : self.columns[1]]
        return np.ascontiguousarray(self._canonical(part))

    def place(self, region: npt.NDArray[Any], canvas: npt.NDArray[Any]) -> None:
        """Write a canonical ``region`` (same shape as :meth:`cut` gives) back into ``canvas``."""
        canvas[:, self.columns[0] : self.columns[1]] = self._canonical(region)

    def _canonical(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        # Each flip is its own inverse: the same flips map the source to canonical and back.
        if self.mirrored:
            values = np.fliplr(values)
        return np.flipud(values) if self.upside_down else values


_DIRECTION = re.compile(r"[APRLHF]{1,3}")


def patient_orientation(value: Sequence[str] | None) -> tuple[str, str] | None:
    """A Patient Orientation (row direction, column direction) as read here and stamped on
    the overlays: each direction one to three of A, P, R, L, H, F (also oblique, PS3.3
    C.7.6.1.1.1: A\\FR), upper-cased; None when absent or unreadable. One reading for both:
    the hips were split by a lenient one (r\\f, R\\FEET) and the overlay stamped by a
    strict one, so an overlay could say L where its banner put the right hip."""
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, column = (str(v).strip().upper() for v in value)
    if not (_DIRECTION.fullmatch(row) and _DIRECTION.fullmatch(column)):
        return None
    return row, column


def display_flips(orientation: Sequence[str] | None) -> tuple[bool, bool]:
    """(rows run toward the patient's right, columns run toward the head) for a Patient
    Orientation (row direction, column direction): an image flipped left-right, or upside
    down, against the AP display convention. Absent or unreadable
    (:func:`patient_orientation`): neither. An image turned 90 degrees (rows toward the head
    or feet) is refused (:class:`RegionError`)."""
    read = patient_orientation(orientation)
    if read is None:
        return False, False
    row, column = read
    if row.startswith(("H", "F")):
        # Turned 90 degrees: the halves would each hold parts of both hips.
        raise RegionError(
            f"Patient Orientation {row}\\{column}: the image's rows run toward the "
            f"{'head' if row.startswith('H') else 'feet'} (turned 90 degrees); hips are found "
            "only in images whose rows run left-right or front-back"
        )
    return row.startswith("R"), column.startswith("H")


def hip_regions(
    shape: tuple[int, int], laterality: str, orientation: Sequence[str] | None = None
) -> tuple[HipRegion, ...]:
    """The hips an image of ``shape`` shows: both halves of a pelvis (laterality B or
    unknown), or the whole image for one hip (R, or L mirrored), for an image displayed as
    ``orientation`` (its Patient Orientation; see :func:`display_flips`)."""
    rows, cols = shape
    if cols < 2:
        raise RegionError(f"hip_regions: expected an image at least 2 columns wide, got {shape}")
    flipped, upside_down = display_flips(orientation)
    if laterality in ("R", "L"):
        row = _row_direction(orientation)
        # A lateral view (rows front-back): canonical is the right lateral as the engines
        # learnt it, rows toward the patient's posterior (anterior on the left). The
        # orientation says how this one is displayed, whichever hip it shows: a site that
        # hangs its left laterals that way too needs no mirroring (was: every L mirrored).
        mirrored = row == "A" if row in ("A", "P") else (laterality == "L") != flipped
        return (HipRegion(laterality, rows, (0, cols), mirrored, upside_down),)
    read = patient_orientation(orientation)
    if read is not None and read[0].startswith(("A", "P")):
        # Rows front-back: a lateral projection, both hips on top of each other; its halves
        # (front and back) were read as a right and a left hip.
        raise RegionError(
            f"Patient Orientation {read[0]}\\{read[1]}: the image's rows run front-back (a "
            f"lateral projection) but its laterality is {laterality or 'not given'}: such an "
            "image shows one hip (R or L), never two"
        )
    half = cols // 2
    first, second = (0, half), (cols - half, cols)  # the image's left and right halves
    right, left = (second, first) if flipped else (first, second)
    return (
        HipRegion("R", rows, right, flipped, upside_down),
        HipRegion("L", rows, left, not flipped, upside_down),
    )


def _row_direction(orientation: Sequence[str] | None) -> str:
    """The first letter of the row direction of a Patient Orientation, or ""."""
    read = patient_orientation(orientation)
    return "" if read is None else read[0][:1]
