"""Turning a given pixel array into stored values of a chosen bit depth.

The rule, for every builder: integer pixels that already lie in
``0 .. 2**bits_stored - 1`` are stored unchanged; anything else (floats, negative
or too-large integers) is mapped linearly from its minimum..maximum onto that
range and rounded (a constant image becomes all zeros). NaN and infinity are
refused.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from dicom_node.errors import FactoryError

UInt16Array = npt.NDArray[np.uint16]


def check_bits(bits_stored: int, low: int, high: int) -> None:
    """Raise unless ``low <= bits_stored <= high``."""
    if not low <= bits_stored <= high:
        raise FactoryError(f"bits_stored: expected {low}-{high}, got {bits_stored}")


def check_array(pixels: npt.ArrayLike, ndim: int, name: str) -> npt.NDArray[np.generic]:
    """The pixels as a numeric, finite, non-empty array of ``ndim`` dimensions."""
    arr = np.asarray(pixels)
    if arr.ndim != ndim:
        raise FactoryError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise FactoryError(f"{name}: expected a non-empty array, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise FactoryError(f"{name}: expected numeric pixels, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise FactoryError(f"{name}: expected real pixels, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise FactoryError(f"{name}: expected finite values, found NaN or infinity")
    if max(arr.shape[-2:]) > 0xFFFF:
        raise FactoryError(f"{name}: rows and columns must be at most 65535, got {arr.shape}")
    return arr


def to_stored(pixels: npt.NDArray[np.generic], bits_stored: int) -> UInt16Array:
    """Stored values for ``pixels`` at ``bits_stored`` bits (see the module docstring)."""
    top = (1 << bits_stored) - 1
    if np.issubdtype(pixels.dtype, np.integer):
        lo, hi = int(pixels.min()), int(pixels.max())
        if lo >= 0 and hi <= top:
            return pixels.astype(np.uint16)
    values = pixels.astype(np.float64)
    lo_f, hi_f = float(values.min()), float(values.max())
    if hi_f == lo_f:
        return np.zeros(pixels.shape, dtype=np.uint16)
    scaled = np.rint((values - lo_f) * (top / (hi_f - lo_f)))
    return scaled.astype(np.uint16)
