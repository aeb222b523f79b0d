"""From the files of a CT series to a Hounsfield-unit volume.

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

From the volume to an engine's fixed grid (resampling, the HU window, a bilateral field's
halves): :mod:`engines.ct_grid`.
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
from pydicom.pixels.processing import apply_modality_lut

from dicom_node.errors import UNREADABLE_DICOM, DicomNodeError, describe
from engines.pixels import (
    PixelDataError,
    padding_mask,
    refuse_broken_codestream,
)

# SimpleITK's wrappers are unannotated; going through one Any keeps that out of mypy's way
# (sitk.Image values are typed Any below, and every function here returns typed values
# or such an image).
sitk: Any = SimpleITK

Vector = tuple[float, float, float]
Direction = tuple[float, float, float, float, float, float, float, float, float]

AIR_HU = -1024.0  # what Pixel Padding (not image) reads as, and the grid outside the field
# Direction cosines of two slices that agree (DS values carry about 10 digits).
ORIENTATION_TOLERANCE = 1e-4
# Relative tolerance of Pixel Spacing between slices.
SPACING_TOLERANCE = 1e-4
# Two slices closer than this along the normal are the same slice (mm).
DUPLICATE_MM = 0.01
# A gap may differ from the series' slice step by this fraction (or 0.01 mm).
STEP_TOLERANCE = 0.05
# How far (share of a slice spacing) a slice may lie from its place on the volume's regular
# grid: gaps within STEP_TOLERANCE each may still add up along the series.
DRIFT_TOLERANCE = 0.25
# The most voxels a series may have: 2**28 is 1024 slices of 512 x 512, 1 GiB in float32,
# ~3 GiB at the peak of reading and resampling it. A larger one (a thin whole-body
# reconstruction) is refused before it is decoded, as unusable, rather than risk the node's
# memory on one study.
MAX_VOXELS = 2**28
# The in-plane offset a slice may have from the first one, as a fraction of a pixel.
SHIFT_TOLERANCE = 0.1
# The widest slice spacing a series may have and be a volume (mm): slices further apart (a
# femoral-version protocol's neck and knee, 400 mm) left the engine's 1 mm grid to
# interpolation alone.
MAX_SLICE_STEP_MM = 10.0
# How far ImageOrientationPatient's row and column cosines may be from unit length and
# from orthogonal (DS values carry 6-16 significant digits).
COSINE_TOLERANCE = 1e-3


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
    """The volume of the instances of ``series_uid`` among ``paths`` (other series are skipped).

    Whatever makes the files unusable as one volume raises VolumeError, a header value of
    the wrong kind too (an empty Rescale Slope, NumberOfFrames 'x?'), so a caller that
    treats a bad series as missing never sees another error."""
    try:
        return _read_series(paths, series_uid)
    except VolumeError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise VolumeError(
            f"series {series_uid}: a header value is not usable ({describe(exc)})"
        ) from exc


def _read_series(paths: Sequence[Path], series_uid: str) -> CtVolume:
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
    voxels = len(slices) * first.shape[0] * first.shape[1]
    if voxels > MAX_VOXELS:  # checked on the headers, before any pixel is decoded
        raise VolumeError(
            f"series {series_uid}: {len(slices)} slices of {first.shape[0]} x {first.shape[1]} "
            f"are {voxels} voxels, over the {MAX_VOXELS} a series may have (reading it takes "
            "about three times its size in float32)"
        )
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


# Reading ------------------------------------------------------------------------------


def _header(path: Path) -> Dataset:
    try:
        return dcmread(path, stop_before_pixels=True)
    except UNREADABLE_DICOM as exc:
        raise VolumeError(f"file {path}: not a readable DICOM file ({describe(exc)})") from exc


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
    orientation = _numbers(series_uid, geometry, "ImageOrientationPatient", 6, name)
    row, col = orientation[:3], orientation[3:]
    if (
        abs(float(np.linalg.norm(row)) - 1.0) > COSINE_TOLERANCE
        or abs(float(np.linalg.norm(col)) - 1.0) > COSINE_TOLERANCE
        or abs(float(np.dot(row, col))) > COSINE_TOLERANCE
    ):
        # Else the slice normal is wrong, and the refusal blamed a duplicated slice or a
        # gantry tilt.
        raise VolumeError(
            f"series {series_uid}, instance {name}: ImageOrientationPatient {_fmt(orientation)} "
            "is not two orthogonal unit vectors (row and column direction cosines)"
        )
    return _Slice(
        path=path,
        uid=name,
        orientation=orientation,
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
        transform = _group_item(group, shared, "PixelValueTransformationSequence")
        if transform is None:
            if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
                # Enhanced CT requires the group: without it the Hounsfield units are not
                # known (read as slope 1, intercept 0, every value was 1024 HU off).
                raise VolumeError(
                    f"series {series_uid}, instance {name}: no Rescale Slope or Intercept in "
                    "the frame's or the shared PixelValueTransformationSequence, nor at the "
                    "top level: its Hounsfield units are not known"
                )
            transform = ds  # a non-conformant image that puts them at the top level
        try:
            rescale = (
                float(transform.get("RescaleSlope", 1.0)),
                float(transform.get("RescaleIntercept", 0.0)),
            )
        except (TypeError, ValueError) as exc:
            raise VolumeError(
                f"series {series_uid}, instance {name}: Rescale Slope and Intercept expected "
                f"numbers ({describe(exc)})"
            ) from exc
        if not all(math.isfinite(v) for v in rescale):  # float("NaN"), float("inf") pass
            raise VolumeError(
                f"series {series_uid}, instance {name}: Rescale Slope and Intercept expected "
                f"finite numbers, got {_fmt(rescale)}"
            )
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
    # Each gap within tolerance is not enough: gaps that creep (1.0 mm, then 1.045 mm)
    # would put slices a whole step from where the volume's regular grid shows them.
    mean = float((along[-1] - along[0]) / (len(along) - 1))
    if mean > MAX_SLICE_STEP_MM + DUPLICATE_MM:
        raise VolumeError(
            f"series {series_uid}: slices {mean:.3f} mm apart, more than the "
            f"{MAX_SLICE_STEP_MM:g} mm a volume may have (a localizer pair or a protocol of "
            "separate levels: its inside would be interpolation)"
        )
    drift = np.abs(along - (along[0] + mean * np.arange(len(along))))
    worst = int(np.argmax(drift))
    if drift[worst] > max(DUPLICATE_MM, DRIFT_TOLERANCE * mean):
        raise VolumeError(
            f"series {series_uid}: irregular slice spacing: instance {slices[worst].uid} at "
            f"{along[worst]:.3f} mm along the slice normal is {drift[worst]:.3f} mm from its "
            f"place on a regular grid of {mean:.3f} mm slices"
        )
    return mean


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
    hu = frames[s.path][s.frame] * slope + intercept
    return np.asarray(np.nan_to_num(hu, nan=AIR_HU), dtype=np.float32)


def _stored_frames(series_uid: str, path: Path) -> npt.NDArray[np.float32]:
    """The stored values of every frame of a multi-frame image, [frame, row, column]; NaN
    where they are padding."""
    ds, stored = _decoded(series_uid, path, modality_lut=False)
    return stored.reshape(-1, int(ds.Rows), int(ds.Columns))


def _pixels(series_uid: str, path: Path) -> npt.NDArray[np.float32]:
    """The Hounsfield units of one slice (the Modality LUT of that instance applied)."""
    hu = _decoded(series_uid, path, modality_lut=True)[1]
    return np.asarray(np.nan_to_num(hu, nan=AIR_HU), dtype=np.float32)


def _decoded(
    series_uid: str, path: Path, modality_lut: bool
) -> tuple[Dataset, npt.NDArray[np.float32]]:
    """The instance and its pixel values, stored or through its Modality LUT, NaN where
    they are padding (Pixel Padding Value, with its range limit: outside the reconstruction
    circle, read as real values, -33792 HU dragged the tissue beside it out of the window
    in the resampling); pydicom's errors (an unsupported transfer syntax raises
    NotImplementedError) become a VolumeError."""
    try:
        ds = dcmread(path)
    except UNREADABLE_DICOM as exc:  # changed on disk since its header was read
        raise VolumeError(f"file {path}: not a readable DICOM file ({describe(exc)})") from exc
    try:
        # The decoder allocates what a codestream declares, whatever Rows and Columns say;
        # cut short, libjpeg fills the rows it lacks with grey: no error of its own.
        refuse_broken_codestream(ds)
        stored = ds.pixel_array
        with np.errstate(invalid="ignore", over="ignore"):  # NaN or inf: refused below
            values = np.asarray(
                apply_modality_lut(stored, ds) if modality_lut else stored, dtype=np.float32
            )
        padding = padding_mask(stored, ds)
    except PixelDataError as exc:
        raise VolumeError(f"series {series_uid}: {exc}") from exc
    except (
        ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError, TypeError
    ) as exc:  # fmt: skip
        raise VolumeError(
            f"series {series_uid}, instance {_uid(ds)}: pixel data cannot be decoded "
            f"({describe(exc)})"
        ) from exc
    if not np.isfinite(values).all():  # a Rescale Slope of NaN or inf (DS reads them)
        raise VolumeError(
            f"series {series_uid}, instance {_uid(ds)}: the Modality LUT (Rescale "
            "Slope/Intercept) gives values that are not finite numbers"
        )
    if padding is not None:
        values[padding] = np.nan
    return ds, values


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
