"""Hip regions of an AP pelvis radiograph, in the canonical orientation the engines expect.

The canonical hip is the patient's right hip as an AP displays it: femoral shaft toward
column 0, the midline toward the last column. The left hip is mirrored into it, so one
model sees every hip the same way round.
"""

from __future__ import annotations

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
