"""From the files of a CT series to a Hounsfield-unit volume, and to an engine's fixed grid.

Reading. The headers and pixels are read with pydicom and the volume is assembled
here; SimpleITK only holds the result (``sitk.Image`` with origin, spacing and
direction) and resamples it. Not ``sitk.ImageSeriesReader`` (GDCM), because:

* pydicom decodes every transfer syntax the node accepts through the same plug-ins
  (pylibjpeg, pyjpegls, pylibjpeg-rle/-openjpeg) that already decode the node's
  radiographs, so a series the node stored is a series it can read; GDCM is a second
  codec stack with its own gaps (it prints to stderr instead of raising on some
  12-bit JPEG streams, for one).
* The Modality LUT is applied per instance: a slice may carry its own Rescale Slope
  (the factory and real modalities change it when narrowing to a codec's precision).
* The series reader trusts the file order and derives the slice spacing from the
  first and last positions; it does not notice a missing, duplicated or shifted
  slice. Here the slices are sorted by their position along the slice normal
  (ImageOrientationPatient x ImagePositionPatient, never InstanceNumber) and the
  geometry is checked, and every refusal is a :class:`VolumeError` that names the
  series and the instance or position at fault.
* A multi-frame image (Enhanced CT, Legacy Converted Enhanced CT) is a stack of frames
  whose geometry and rescale sit in its functional groups (per frame, or shared); each
  frame is a slice like any other, checked and sorted the same way. A series may even mix
  single-frame and multi-frame instances.

Axes. ``CtVolume.image`` uses SimpleITK's (x, y, z) = (column, row, slice) index
order: spacing is (column spacing, row spacing, slice spacing) in mm, the origin is
the patient position (LPS) of the first voxel of the most negative slice along the
normal, and the direction matrix's columns are the row cosines, the column cosines
and the slice normal (row x column). ``sitk.GetArrayFromImage`` gives [z, y, x].

The engine's grid (:func:`to_grid`) is in patient axes whatever the acquisition: the
array is [D, H, W] = [inferior->superior, anterior->posterior, right->left], the
axial layout of :data:`dicom_node.synthetic.AXIAL` series and of the CT phantoms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut

from dicom_node.errors import DicomNodeError

# SimpleITK's wrappers are unannotated; going through one Any keeps that out of mypy's way
# (sitk.Image values are typed Any below, and every function here returns typed values
# or such an image).
sitk: Any = SimpleITK

Vector = tuple[float, float, float]
Direction = tuple[float, float, float, float, float, float, float, float, float]

AIR_HU = -1024.0
# Bone window for hip CT: -500..1500 HU, the factory's window. Air and fat sit at or
# near 0, soft tissue (~40 HU) at 0.27, trabecular bone (200-400 HU) at 0.35-0.45 and
# cortical bone (1000-1500 HU) at 0.75-1.0, so sclerosis and lucencies stay apart.
BONE_WINDOW = (500.0, 2000.0)
# Direction cosines of two slices that agree (DS values carry about 10 digits).
ORIENTATION_TOLERANCE = 1e-4
# Relative tolerance of Pixel Spacing between slices.
SPACING_TOLERANCE = 1e-4
# Two slices closer than this along the normal are the same slice (mm).
DUPLICATE_MM = 0.01
# A gap may differ from the series' slice step by this fraction (or 0.01 mm).
STEP_TOLERANCE = 0.05
# The in-plane offset a slice may have from the first one, as a fraction of a pixel.
SHIFT_TOLERANCE = 0.1
# A field of view at least this wide (patient right-left, mm) shows both hips: an adult
# pelvis is ~300 mm across the hips, a CT of one hip ~120-200 mm.
BILATERAL_FIELD_MM = 250.0
# The midline of a bilateral field is the axis of mirror symmetry of its bone (cortical and
# dense trabecular bone: at least MIDLINE_BONE_HU), sampled on a MIDLINE_STEP_MM grid. Fewer
# than MIDLINE_MIN_BONE bone samples, or an axis outside the field's central half, and the
# field's centre is taken instead.
MIDLINE_BONE_HU = 300.0
MIDLINE_STEP_MM = 2.0
MIDLINE_MIN_BONE = 50


class VolumeError(DicomNodeError, ValueError):
    """The files of a CT series do not make one regular volume (or an argument is invalid)."""


@dataclass(frozen=True, eq=False)
class CtVolume:
    """A CT series as a float32 Hounsfield-unit ``sitk.Image`` and its geometry.

    ``size``, ``spacing``, ``origin`` and ``direction`` repeat the image's, in SimpleITK's
    (x, y, z) order; ``instance_uids`` are the SOP Instance UIDs in slice order and
    ``frame_numbers`` each slice's frame in its instance (1 for a single-frame image).
    """

    image: Any  # SimpleITK.Image (SimpleITK has no type information)
    series_uid: str
    size: tuple[int, int, int]
    spacing: Vector
    origin: Vector
    direction: Direction
    instance_uids: tuple[str, ...]
    frame_numbers: tuple[int, ...]

    def array(self) -> npt.NDArray[np.float32]:
        """The voxels as [z, y, x] Hounsfield units (a copy)."""
        return np.asarray(sitk.GetArrayFromImage(self.image), dtype=np.float32)


@dataclass(frozen=True)
class _Slice:
    path: Path
    uid: str  # the SOP Instance UID, with "#<frame>" for a frame of a multi-frame image
    orientation: npt.NDArray[np.float64]
    position: npt.NDArray[np.float64]
    shape: tuple[int, int]
    pixel_spacing: tuple[float, float]
    frame: int | None = None  # 0-based frame of a multi-frame image
    rescale: tuple[float, float] = (1.0, 0.0)  # a frame's (slope, intercept)


def read_ct_series(paths: Sequence[Path], series_uid: str) -> CtVolume:
    """The volume of the instances of ``series_uid`` among ``paths`` (other series are skipped)."""
    headers = [_header(Path(p)) for p in paths]
    members = [
        (Path(p), ds)
        for p, ds in zip(paths, headers, strict=True)
        if str(ds.get("SeriesInstanceUID", "")) == series_uid
    ]
    if not members:
        raise VolumeError(f"series {series_uid}: none of the {len(paths)} files belongs to it")
    slices = [s for path, ds in members for s in _slices(series_uid, path, ds)]
    if len(slices) < 2:
        raise VolumeError(
            f"series {series_uid}: 1 slice ({slices[0].uid}), a volume needs at least 2"
        )
    first = slices[0]
    for s in slices[1:]:
        _check_plane(series_uid, first, s)
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    along = np.array([float(np.dot(s.position, normal)) for s in slices])
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    along = along[order]
    step = _check_steps(series_uid, slices, along)
    _check_stacked(series_uid, slices, normal)
    frames: dict[Path, npt.NDArray[np.float32]] = {}  # each multi-frame image decoded once
    hu = np.stack([_slice_hu(series_uid, s, frames) for s in slices])
    dy, dx = first.pixel_spacing
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((dx, dy, step))
    image.SetOrigin(tuple(float(v) for v in slices[0].position))
    direction = tuple(float(v) for v in np.column_stack([row, col, normal]).ravel())
    image.SetDirection(direction)
    return CtVolume(
        image=image,
        series_uid=series_uid,
        size=_ints(image.GetSize()),
        spacing=_floats(image.GetSpacing()),
        origin=_floats(image.GetOrigin()),
        direction=_direction(image.GetDirection()),
        instance_uids=tuple(s.uid.partition("#")[0] for s in slices),
        frame_numbers=tuple(1 if s.frame is None else s.frame + 1 for s in slices),
    )


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


# Reading ------------------------------------------------------------------------------


def _header(path: Path) -> Dataset:
    try:
        return dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise VolumeError(f"file {path}: not a readable DICOM file ({exc})") from exc


def _uid(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "?"))


def _numbers(
    series_uid: str, ds: Dataset, keyword: str, count: int, name: str | None = None
) -> npt.NDArray[np.float64]:
    value = ds.get(keyword)
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        numbers = np.empty(0)
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise VolumeError(
            f"series {series_uid}, instance {name or _uid(ds)}: {keyword} expected {count} "
            f"numbers, got {value!r}"
        )
    return numbers


def _slices(series_uid: str, path: Path, ds: Dataset) -> list[_Slice]:
    """The slices of one instance: itself, or each frame of a multi-frame image."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _frames(series_uid, path, ds, frames)
    if frames != 1:
        raise VolumeError(
            f"series {series_uid}, instance {_uid(ds)}: NumberOfFrames {frames} without "
            "per-frame functional groups (an enhanced image's geometry); expected one frame "
            "per instance"
        )
    return [_slice(series_uid, path, ds, ds, _uid(ds))]


def _slice(
    series_uid: str,
    path: Path,
    ds: Dataset,
    geometry: Dataset,
    name: str,
    frame: int | None = None,
    rescale: tuple[float, float] = (1.0, 0.0),
) -> _Slice:
    """A slice from ``geometry`` (the instance, or a frame's functional groups merged)."""
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not isinstance(rows, int) or not isinstance(cols, int) or rows < 1 or cols < 1:
        raise VolumeError(
            f"series {series_uid}, instance {_uid(ds)}: expected positive Rows and Columns, "
            f"got {rows!r} x {cols!r}"
        )
    spacing = _numbers(series_uid, geometry, "PixelSpacing", 2, name)
    if not np.all(spacing > 0):
        raise VolumeError(
            f"series {series_uid}, instance {name}: PixelSpacing expected positive values, "
            f"got {tuple(float(v) for v in spacing)}"
        )
    return _Slice(
        path=path,
        uid=name,
        orientation=_numbers(series_uid, geometry, "ImageOrientationPatient", 6, name),
        position=_numbers(series_uid, geometry, "ImagePositionPatient", 3, name),
        shape=(rows, cols),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        frame=frame,
        rescale=rescale,
    )


# The functional groups a frame's slice geometry and Hounsfield units come from.
_PLANE_GROUPS = {
    "PlaneOrientationSequence": "ImageOrientationPatient",
    "PlanePositionSequence": "ImagePositionPatient",
    "PixelMeasuresSequence": "PixelSpacing",
}


def _frames(series_uid: str, path: Path, ds: Dataset, frames: int) -> list[_Slice]:
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != frames:
        raise VolumeError(
            f"series {series_uid}, instance {_uid(ds)}: NumberOfFrames {frames} but "
            f"{len(per_frame)} per-frame functional groups"
        )
    shared_groups = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
    shared = shared_groups[0]
    slices = []
    for i, group in enumerate(per_frame):
        name = f"{_uid(ds)}#{i + 1}"
        geometry = Dataset()
        for sequence, keyword in _PLANE_GROUPS.items():
            item = _group_item(group, shared, sequence)
            if item is None or keyword not in item:
                raise VolumeError(
                    f"series {series_uid}, instance {name}: no {keyword} in the frame's or the "
                    f"shared {sequence}"
                )
            geometry[keyword] = item[keyword]
        transform = _group_item(group, shared, "PixelValueTransformationSequence") or Dataset()
        try:
            rescale = (
                float(transform.get("RescaleSlope", 1.0)),
                float(transform.get("RescaleIntercept", 0.0)),
            )
        except (TypeError, ValueError) as exc:
            raise VolumeError(
                f"series {series_uid}, instance {name}: Rescale Slope and Intercept expected "
                f"numbers ({exc})"
            ) from exc
        slices.append(_slice(series_uid, path, ds, geometry, name, i, rescale))
    return slices


def _group_item(group: Dataset, shared: Dataset, sequence: str) -> Dataset | None:
    """The item of a functional group macro: the frame's own, else the shared one."""
    for source in (group, shared):
        items = source.get(sequence)
        if items:
            item: Dataset = items[0]
            return item
    return None


def _check_plane(series_uid: str, first: _Slice, s: _Slice) -> None:
    """Raise unless ``s`` has the orientation, size and pixel spacing of ``first``."""
    where = f"series {series_uid}: instance {s.uid}"
    if not np.allclose(s.orientation, first.orientation, rtol=0.0, atol=ORIENTATION_TOLERANCE):
        raise VolumeError(
            f"{where} has ImageOrientationPatient {_fmt(s.orientation)}, "
            f"but instance {first.uid} has {_fmt(first.orientation)}"
        )
    if s.shape != first.shape:
        raise VolumeError(
            f"{where} is {s.shape[0]} x {s.shape[1]} (rows x columns), "
            f"but instance {first.uid} is {first.shape[0]} x {first.shape[1]}"
        )
    if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=SPACING_TOLERANCE, atol=0.0):
        raise VolumeError(
            f"{where} has PixelSpacing {_fmt(s.pixel_spacing)}, "
            f"but instance {first.uid} has {_fmt(first.pixel_spacing)}"
        )


def _check_steps(series_uid: str, slices: list[_Slice], along: npt.NDArray[np.float64]) -> float:
    """Raise on a duplicated, missing or irregular slice; return the mean slice spacing."""
    gaps = np.diff(along)
    for i, gap in enumerate(gaps):
        if gap < DUPLICATE_MM:
            raise VolumeError(
                f"series {series_uid}: duplicated slice, instances {slices[i].uid} and "
                f"{slices[i + 1].uid} are both at {along[i]:.3f} mm along the slice normal"
            )
    # The step: the median of the gaps that look like one step (not a missing slice).
    step = float(np.median(gaps[gaps <= 1.5 * gaps.min()]))
    tolerance = max(DUPLICATE_MM, STEP_TOLERANCE * step)
    for i, gap in enumerate(gaps):
        if abs(gap - step) <= tolerance:
            continue
        between = (
            f"between {along[i]:.3f} and {along[i + 1]:.3f} mm along the slice normal "
            f"(instances {slices[i].uid} and {slices[i + 1].uid}): gap {gap:.3f} mm, "
            f"slice spacing {step:.3f} mm"
        )
        missing = round(gap / step) - 1
        if missing >= 1 and abs(gap - (missing + 1) * step) <= tolerance * (missing + 1):
            raise VolumeError(f"series {series_uid}: {missing} slice(s) missing {between}")
        raise VolumeError(f"series {series_uid}: irregular slice spacing {between}")
    return float((along[-1] - along[0]) / (len(along) - 1))


def _check_stacked(series_uid: str, slices: list[_Slice], normal: npt.NDArray[np.float64]) -> None:
    """Raise unless every slice lies on the normal through the first (no tilt or shift)."""
    first = slices[0]
    limit = SHIFT_TOLERANCE * min(first.pixel_spacing)
    for s in slices[1:]:
        d = s.position - first.position
        offset = float(np.linalg.norm(d - np.dot(d, normal) * normal))
        if offset > limit:
            raise VolumeError(
                f"series {series_uid}: instance {s.uid} is shifted {offset:.3f} mm in-plane "
                f"from instance {first.uid} (gantry tilt or moved field of view); "
                f"its ImagePositionPatient is {_fmt(s.position)}"
            )


def _slice_hu(
    series_uid: str, s: _Slice, frames: dict[Path, npt.NDArray[np.float32]]
) -> npt.NDArray[np.float32]:
    if s.frame is None:
        return _pixels(series_uid, s.path)
    if s.path not in frames:
        frames[s.path] = _stored_frames(series_uid, s.path)
    slope, intercept = s.rescale
    return np.asarray(frames[s.path][s.frame] * slope + intercept, dtype=np.float32)


def _stored_frames(series_uid: str, path: Path) -> npt.NDArray[np.float32]:
    """The stored values of every frame of a multi-frame image, [frame, row, column]."""
    ds, stored = _decoded(series_uid, path, modality_lut=False)
    return np.asarray(stored, dtype=np.float32).reshape(-1, int(ds.Rows), int(ds.Columns))


def _pixels(series_uid: str, path: Path) -> npt.NDArray[np.float32]:
    """The Hounsfield units of one slice (the Modality LUT of that instance applied)."""
    return np.asarray(_decoded(series_uid, path, modality_lut=True)[1], dtype=np.float32)


def _decoded(series_uid: str, path: Path, modality_lut: bool) -> tuple[Dataset, npt.NDArray[Any]]:
    """The instance and its pixel values, stored or through its Modality LUT; pydicom's
    errors (an unsupported transfer syntax raises NotImplementedError) become a VolumeError."""
    ds = dcmread(path)
    try:
        stored = ds.pixel_array
        return ds, apply_modality_lut(stored, ds) if modality_lut else stored
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError) as exc:
        raise VolumeError(
            f"series {series_uid}, instance {_uid(ds)}: pixel data cannot be decoded ({exc})"
        ) from exc


def _fmt(values: Sequence[float] | npt.NDArray[np.float64]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _ints(values: Sequence[int]) -> tuple[int, int, int]:
    x, y, z = (int(v) for v in values)
    return x, y, z


def _floats(values: Sequence[float]) -> Vector:
    x, y, z = (float(v) for v in values)
    return x, y, z


def _direction(values: Sequence[float]) -> Direction:
    a, b, c, d, e, f, g, h, i = (float(v) for v in values)
    return a, b, c, d, e, f, g, h, i


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
