"""From a DICOM radiograph to the [0, 1] picture an engine sees, and to its input size.

Modality LUT (rescale slope/intercept or a LUT sequence), then the VOI: the
first window (linear, PS3.3 C.11.2.1.2) or a VOI LUT sequence, else a robust
percentile window (0.5-99.5 %); MONOCHROME1 is inverted so bone is bright.
Resizing first makes pixels square using Pixel Spacing, then pads to a square
and resamples with area averaging (anti-aliased), so anatomy keeps its shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from torch.nn import functional

from dicom_node.errors import DicomNodeError

Image = npt.NDArray[np.float32]


class PixelDataError(DicomNodeError, ValueError):
    """The pixel data cannot be turned into an image (absent, undecodable, wrong shape)."""


def display_pixels(ds: Dataset) -> Image:
    """The displayed picture of a single-frame greyscale image, float32 in [0, 1]."""
    if "PixelData" not in ds:
        raise PixelDataError(f"SOP instance {ds.get('SOPInstanceUID', '?')}: no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PixelDataError(
            f"PhotometricInterpretation: expected MONOCHROME1 or MONOCHROME2, got {photometric!r}"
        )
    try:
        stored = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
        raise PixelDataError(
            f"SOP instance {ds.get('SOPInstanceUID', '?')}: pixel data cannot be decoded ({exc})"
        ) from exc
    if stored.ndim != 2:
        raise PixelDataError(f"pixel data: expected one 2-D frame, got shape {stored.shape}")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        lut = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        picture = _stretch(lut, 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(_first(ds.WindowCenter))
        width = max(float(_first(ds.WindowWidth)), 1.0)
        # PS3.3 C.11.2.1.2.1: linear window, output 0..1.
        picture = np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    else:
        low, high = np.percentile(values, (0.5, 99.5))
        picture = _stretch(values, float(low), float(high))
    if photometric == "MONOCHROME1":
        picture = 1.0 - picture
    return picture.astype(np.float32)


def square_pixels(image: Image, spacing: tuple[float, float] | None) -> Image:
    """Resample so rows and columns have the same spacing (the finer of the two)."""
    if spacing is None or abs(spacing[0] - spacing[1]) < 1e-6 * max(spacing):
        return image
    row, col = spacing
    finest = min(row, col)
    shape = (round(image.shape[0] * row / finest), round(image.shape[1] * col / finest))
    return _resample(image, shape)


def to_input(image: Image, size: int) -> Image:
    """Pad to a square (with the image's darkest value, centred) and resample to ``size``."""
    h, w = image.shape
    edge = max(h, w)
    canvas = np.full((edge, edge), float(image.min()), dtype=np.float32)
    top, left = (edge - h) // 2, (edge - w) // 2
    canvas[top : top + h, left : left + w] = image
    return _resample(canvas, (size, size))


@dataclass(frozen=True)
class InputGeometry:
    """How a region became an engine input, so a map on the input grid can go back."""

    region_shape: tuple[int, int]  # the region in the source image's pixels
    square_shape: tuple[int, int]  # after square_pixels
    size: int  # the engine's input edge

    def to_region(self, grid: npt.NDArray[np.floating]) -> Image:
        """A map on the input grid (any resolution, square) resampled onto the region."""
        h, w = self.square_shape
        edge = max(h, w)
        full = _resample(np.asarray(grid, dtype=np.float32), (edge, edge))
        top, left = (edge - h) // 2, (edge - w) // 2
        return _resample(full[top : top + h, left : left + w], self.region_shape)


def prepare(
    region: Image, spacing: tuple[float, float] | None, size: int
) -> tuple[Image, InputGeometry]:
    """The engine input of a region (square pixels, padded, resized) and its geometry."""
    squared = square_pixels(region, spacing)
    geometry = InputGeometry(
        (int(region.shape[0]), int(region.shape[1])),
        (int(squared.shape[0]), int(squared.shape[1])),
        size,
    )
    return to_input(squared, size), geometry


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            return float(value[0]), float(value[1])
    return None


def _resample(image: Image, shape: tuple[int, int]) -> Image:
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = functional.interpolate(
        tensor, size=shape, mode="bilinear", align_corners=False, antialias=shrinking
    )
    result: Image = out[0, 0].numpy()
    return result


def _stretch(values: npt.NDArray[np.float64], low: float, high: float) -> npt.NDArray[np.float64]:
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _first(value: Any) -> Any:
    """The first of a multi-valued element (several windows may be given)."""
    return value[0] if isinstance(value, MultiValue) else value
