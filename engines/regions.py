"""Hip regions of an AP pelvis radiograph, in the canonical orientation the engines expect.

The canonical hip is the patient's right hip as an AP displays it: femoral shaft toward
column 0, the midline toward the last column. The left hip is mirrored into it, so one
model sees every hip the same way round.
"""

from __future__ import annotations

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
    says the region was flipped left-right to be canonical (a left hip).
    """

    side: str  # R or L
    rows: int
    columns: tuple[int, int]
    mirrored: bool

    def cut(self, picture: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The canonical region of ``picture`` (the source image's grid), C-contiguous."""
        part = np.asarray(picture)[:, self.columns[0] : self.columns[1]]
        return np.ascontiguousarray(np.fliplr(part) if self.mirrored else part)

    def place(self, region: npt.NDArray[Any], canvas: npt.NDArray[Any]) -> None:
        """Write a canonical ``region`` (same shape as :meth:`cut` gives) back into ``canvas``."""
        values = np.fliplr(region) if self.mirrored else region
        canvas[:, self.columns[0] : self.columns[1]] = values


def hip_regions(shape: tuple[int, int], laterality: str) -> tuple[HipRegion, ...]:
    """The hips an image of ``shape`` shows: both halves of a pelvis (laterality B or
    unknown), or the whole image for one hip (R, or L mirrored)."""
    rows, cols = shape
    if cols < 2:
        raise RegionError(f"hip_regions: expected an image at least 2 columns wide, got {shape}")
    if laterality == "R":
        return (HipRegion("R", rows, (0, cols), False),)
    if laterality == "L":
        return (HipRegion("L", rows, (0, cols), True),)
    half = cols // 2
    return (
        HipRegion("R", rows, (0, half), False),
        HipRegion("L", rows, (cols - half, cols), True),
    )
