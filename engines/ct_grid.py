"""From a CT volume in Hounsfield units to an engine's fixed grid.

Resampling (:func:`resample_isotropic`, anti-aliased linear interpolation through
SimpleITK), the fit into the engine's grid (:func:`to_grid`), the HU window
(:func:`hu_window`), and the halves of a field that shows both hips
(:func:`midline_x_mm`, :func:`hemi_volume`); :func:`engine_volume` chains them the
way both training and serving use them. The volumes come from
:func:`engines.volumes.read_ct_series` (a :class:`engines.volumes.CtVolume`) or are
``sitk.Image`` values made from arrays (:func:`volume_image`, for phantoms).

The engine's grid is in patient axes whatever the acquisition: the array is
[D, H, W] = [inferior->superior, anterior->posterior, right->left], the axial layout of
:data:`dicom_node.synthetic.AXIAL` series and of the CT phantoms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK

from engines.volumes import AIR_HU, CtVolume, Vector, VolumeError

# SimpleITK's wrappers are unannotated (as in engines.volumes): one Any keeps that out of
# mypy's way.
sitk: Any = SimpleITK

# Bone window for hip CT: -500..1500 HU, the factory's window. Air and fat sit at or
# near 0, soft tissue (~40 HU) at 0.27, trabecular bone (200-400 HU) at 0.35-0.45 and
# cortical bone (1000-1500 HU) at 0.75-1.0, so sclerosis and lucencies stay apart.
BONE_WINDOW = (500.0, 2000.0)
# A field of view at least this wide (patient right-left, mm) shows both hips: an adult
# pelvis is ~300 mm across the hips, a CT of one hip ~120-200 mm.
BILATERAL_FIELD_MM = 250.0
# How far from x = 0 (the table's centre in patient coordinates, near the patient's midline)
# a narrower field without laterality must be centred to say which hip it shows: a hip lies
# ~90 mm to a side.
SIDE_OFFSET_MM = 30.0
# The midline of a bilateral field is the axis of mirror symmetry of its bone (cortical and
# dense trabecular bone: at least MIDLINE_BONE_HU), sampled on a MIDLINE_STEP_MM grid. Fewer
# than MIDLINE_MIN_BONE bone samples, or an axis outside the field's central half, and the
# field's centre is taken instead.
MIDLINE_BONE_HU = 300.0
MIDLINE_STEP_MM = 2.0
MIDLINE_MIN_BONE = 50


def resample_isotropic(volume: CtVolume | Any, spacing_mm: float = 1.0) -> Any:
    """``volume`` (a :class:`CtVolume` or ``sitk.Image``) on a grid of ``spacing_mm`` cubes.

    Same direction; the new grid has round(extent / spacing_mm) voxels along each axis
    and is centred on the source's box (so the origin moves by under half a voxel, and
    every new voxel centre lies within the source's voxels). Linear interpolation, with
    a Gaussian pre-filter along axes that get coarser; anything outside the source is
    -1024 HU. Returns a float32 ``sitk.Image``.
    """
    image = _image(volume)
    if (
        isinstance(spacing_mm, bool)
        or not isinstance(spacing_mm, int | float)
        or not (math.isfinite(spacing_mm) and spacing_mm > 0)
    ):
        raise VolumeError(f"spacing_mm: expected a positive number of mm, got {spacing_mm!r}")
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    size = np.asarray(image.GetSize(), dtype=np.float64)
    out_size = np.maximum(1, np.rint(size * spacing / spacing_mm))
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(image.GetOrigin()) + direction @ (0.5 * (size - 1.0) * spacing)
    origin = centre - direction @ (0.5 * (out_size - 1.0) * spacing_mm)
    return _resample(
        image,
        [int(n) for n in out_size],
        (float(spacing_mm),) * 3,
        tuple(float(v) for v in origin),
        image.GetDirection(),
    )


def to_grid(
    image: CtVolume | Any, shape: tuple[int, int, int] = (32, 64, 64)
) -> npt.NDArray[np.float32]:
    """The volume fitted into a [D, H, W] grid of cubic voxels, in patient axes, in HU.

    The grid's axes are LPS (W: right->left, H: anterior->posterior, D: inferior->superior,
    the array is [D, H, W]); its voxel size is the smallest that holds the volume's
    bounding box in patient space, so the longest extent relative to the grid fills it
    and the others keep their aspect, centred; the rest is -1024 HU. Returns float32.
    """
    source = _image(image)
    if len(shape) != 3 or not all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in shape
    ):
        raise VolumeError(f"shape: expected three positive integers (D, H, W), got {shape!r}")
    depth, height, width = (int(n) for n in shape)
    low, high = _bounds(source)
    extent = high - low  # x, y, z
    cells = np.array([width, height, depth], dtype=np.float64)
    cube = float(np.max(extent / cells))
    centre = 0.5 * (low + high)
    origin = centre - 0.5 * (cells - 1.0) * cube
    resampled = _resample(
        source,
        [width, height, depth],
        (cube,) * 3,
        tuple(float(v) for v in origin),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    return np.asarray(sitk.GetArrayFromImage(resampled), dtype=np.float32)


def hu_window(
    array: npt.ArrayLike, center: float = BONE_WINDOW[0], width: float = BONE_WINDOW[1]
) -> npt.NDArray[np.float32]:
    """Hounsfield units through a linear window: center - width/2 -> 0, center + width/2 -> 1.

    The default is the bone window :data:`BONE_WINDOW`; values outside are clipped.
    """
    if not (math.isfinite(center) and math.isfinite(width) and width > 0):
        raise VolumeError(
            f"window: expected a finite center and a positive width, got {center!r}/{width!r}"
        )
    values = np.asarray(array, dtype=np.float64)
    return np.clip((values - (center - 0.5 * width)) / width, 0.0, 1.0).astype(np.float32)


def volume_image(
    array: npt.ArrayLike,
    spacing: tuple[float, float, float],
    origin: Vector = (0.0, 0.0, 0.0),
) -> Any:
    """A [z, y, x] HU array with (slice, row, column) ``spacing`` in mm as an axial
    ``sitk.Image`` (identity direction): what :func:`read_ct_series` gives for an axial
    series of those voxels, for volumes that never were files (training phantoms)."""
    values = np.asarray(array, dtype=np.float32)
    if values.ndim != 3:
        raise VolumeError(f"array: expected [z, y, x], got shape {list(values.shape)}")
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise VolumeError(f"spacing: expected three positive mm values, got {spacing!r}")
    image = sitk.GetImageFromArray(values)
    dz, dy, dx = (float(v) for v in spacing)
    image.SetSpacing((dx, dy, dz))
    image.SetOrigin(tuple(float(v) for v in origin))
    return image


def field_width_mm(volume: CtVolume | Any) -> float:
    """The extent of the volume's field in patient x (right-left), in mm."""
    low, high = _bounds(_image(volume))
    return float(high[0] - low[0])


def hip_of_field(low_x_mm: float, high_x_mm: float) -> str | None:
    """What a CT field spanning patient x from ``low_x_mm`` to ``high_x_mm`` shows, by its
    geometry alone: "B" (both hips: at least :data:`BILATERAL_FIELD_MM` wide), "R" or "L"
    (one hip, centred at least :data:`SIDE_OFFSET_MM` to that side; LPS: x < 0 is the
    patient's right), or None (one hip, too near the centre to say which)."""
    if high_x_mm - low_x_mm >= BILATERAL_FIELD_MM:
        return "B"
    centre = 0.5 * (low_x_mm + high_x_mm)
    return "R" if centre <= -SIDE_OFFSET_MM else "L" if centre >= SIDE_OFFSET_MM else None


def field_centre_x_mm(volume: CtVolume | Any) -> float:
    """The centre of the volume's field in patient x (LPS: negative toward the right), mm."""
    low, high = _bounds(_image(volume))
    return float(0.5 * (low[0] + high[0]))


def midline_x_mm(volume: CtVolume | Any) -> float | None:
    """The patient's midline in patient x (mm) for a field that shows both hips, or None.

    A pelvis is close to mirror-symmetric about the sagittal midline, wherever it lies in
    the field: the profile of bone along x (bone samples per column of a
    ``MIDLINE_STEP_MM`` grid) is autoconvolved, and its peak is the axis about which the
    profile best matches its mirror image. None when the field holds too little bone or
    the axis falls outside the field's central half (an estimate not to be trusted).
    """
    source = _image(volume)
    low, high = _bounds(source)
    step = MIDLINE_STEP_MM
    size = np.maximum(1, np.floor((high - low) / step)).astype(int)
    origin = low + 0.5 * (high - low - (size - 1) * step)  # the samples centred in the field
    samples = sitk.Resample(
        source,
        [int(n) for n in size],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        [float(v) for v in origin],
        (step,) * 3,
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        AIR_HU,
        sitk.sitkFloat32,
    )
    bone = sitk.GetArrayFromImage(samples) >= MIDLINE_BONE_HU  # [z, y, x]
    if int(bone.sum()) < MIDLINE_MIN_BONE:
        return None
    profile = bone.sum(axis=(0, 1)).astype(np.float64)
    # c[s] = sum_i p[i] p[s - i] peaks where p[s - i] mirrors p[i]: the axis is at s / 2.
    axis = 0.5 * float(np.argmax(np.convolve(profile, profile)))
    midline = float(origin[0] + axis * step)
    quarter = 0.25 * float(high[0] - low[0])
    if not low[0] + quarter <= midline <= high[0] - quarter:
        return None
    return midline


def hemi_volume(
    volume: CtVolume | Any,
    side: str,
    spacing_mm: float | None = None,
    midline_mm: float | None = None,
) -> Any:
    """The patient's right (``"R"``) or left (``"L"``) half of a bilateral field.

    The field is split at ``midline_mm`` in patient x (LPS: x grows toward the patient's
    left), by default the centre of the field. Both halves are the same width, the
    narrower side's, so that for a symmetric patient the left half is the right one's
    mirror image wherever the patient lay in the field (:func:`midline_x_mm` finds the
    midline). The half is resampled onto an axis-aligned grid of ``spacing_mm`` cubes (the
    engine's, so a whole pelvis is never held at a finer grid than needed; default the
    source's finest spacing); what lies outside the source is -1024 HU. Returns a float32
    ``sitk.Image``.
    """
    if side not in ("R", "L"):
        raise VolumeError(f"side: expected R or L, got {side!r}")
    source = _image(volume)
    low, high = _bounds(source)
    middle = 0.5 * (low[0] + high[0]) if midline_mm is None else float(midline_mm)
    if not (math.isfinite(middle) and low[0] < middle < high[0]):
        raise VolumeError(
            f"midline_mm: expected a position inside the field's x range "
            f"{low[0]:.1f}..{high[0]:.1f} mm, got {midline_mm!r}"
        )
    step = float(min(source.GetSpacing())) if spacing_mm is None else float(spacing_mm)
    size = np.maximum(1, np.ceil((high - low) / step - 1e-6))
    # Both halves' grids start at the midline, so their samples mirror each other exactly.
    size[0] = max(1, math.ceil(min(middle - low[0], high[0] - middle) / step - 1e-6))
    low[0] = middle - size[0] * step if side == "R" else middle
    return _resample(
        source,
        [int(n) for n in size],
        (step,) * 3,
        tuple(float(v) for v in low + 0.5 * step),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


def engine_volume(
    volume: CtVolume | Any,
    grid: tuple[int, int, int],
    spacing_mm: float = 1.0,
    window: tuple[float, float] = BONE_WINDOW,
    mean: float = 0.5,
    std: float = 0.25,
) -> npt.NDArray[np.float32]:
    """An engine's CT input (D, H, W): isotropic resampling to ``spacing_mm``, the
    fixed ``grid`` in patient axes, the HU ``window`` (center, width) to [0, 1], then
    ``(x - mean) / std`` like the radiographs. Training and serving both call this."""
    if not (math.isfinite(std) and std > 0):
        raise VolumeError(f"std: expected a positive number, got {std!r}")
    windowed = hu_window(to_grid(resample_isotropic(volume, spacing_mm), grid), *window)
    out: npt.NDArray[np.float32] = ((windowed - mean) / std).astype(np.float32)
    return out


# Resampling ---------------------------------------------------------------------------


def _image(volume: CtVolume | Any) -> Any:
    image = volume.image if isinstance(volume, CtVolume) else volume
    if not isinstance(image, sitk.Image) or image.GetDimension() != 3:
        raise VolumeError(f"volume: expected a CtVolume or a 3-D SimpleITK image, got {volume!r}")
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def _bounds(image: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The patient-space bounding box (x, y, z) of the voxels' outer edges."""
    size = np.asarray(image.GetSize(), dtype=np.float64)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    corners = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
    index = (corners + 0.5) * size - 0.5  # -0.5 or size - 0.5 along each axis
    points = origin + (index * spacing) @ direction.T
    return points.min(axis=0), points.max(axis=0)


def _resample(
    image: Any,
    size: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
) -> Any:
    """Linear resampling onto the given grid, anti-aliased along axes that get coarser."""
    source_spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    coarsest = float(max(spacing))
    # A Gaussian of sigma (factor - 1) / 2 source voxels, as skimage's anti-aliasing.
    sigma = np.maximum(0.0, (coarsest / source_spacing - 1.0) / 2.0) * source_spacing
    if np.any(sigma > 0.0):
        image = sitk.DiscreteGaussian(image, [float(s) ** 2 for s in sigma], 32, 0.01, True)
    return sitk.Resample(
        image,
        [int(n) for n in size],
        sitk.Transform(),
        sitk.sitkLinear,
        [float(v) for v in origin],
        [float(v) for v in spacing],
        [float(v) for v in direction],
        AIR_HU,
        sitk.sitkFloat32,
    )
