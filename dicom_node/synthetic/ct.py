"""A CT series of the hips: one CT Image Storage instance per slice.

The volume is indexed ``[z, y, x]`` and given in Hounsfield units; each slice is
stored as ``round((HU - intercept) / slope)`` in unsigned ``bits_stored`` bits, and
values that do not fit are refused rather than clipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicom_node.errors import FactoryError
from dicom_node.synthetic.identity import StudyIdentity
from dicom_node.synthetic.modules import (
    check_laterality,
    ds_number,
    new_image,
    set_anatomy,
    set_pixels,
)
from dicom_node.synthetic.pixels import check_array, check_bits
from dicom_node.synthetic.transfer_syntax import check_transfer_syntax, encode

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
# Axial slices of a supine patient, rows along +x (patient left), columns along +y (posterior).
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# A bone window, in Hounsfield units.
_WINDOW = (500, 2000)
_UNIT_TOLERANCE = 1e-4


def _positive(values: Sequence[float], count: int, name: str) -> list[float]:
    if len(values) != count or not all(np.isfinite(v) and v > 0 for v in values):
        raise FactoryError(f"{name}: expected {count} positive numbers, got {tuple(values)}")
    return [float(v) for v in values]


def _directions(orientation: Sequence[float]) -> tuple[npt.NDArray[np.float64], ...]:
    """Row and column direction cosines and the slice normal, after checking them."""
    cosines = np.asarray(orientation, dtype=np.float64)
    if cosines.shape != (6,) or not np.all(np.isfinite(cosines)):
        raise FactoryError(f"orientation: expected 6 direction cosines, got {tuple(orientation)}")
    row, col = cosines[:3], cosines[3:]
    unit = all(abs(np.linalg.norm(v) - 1.0) <= _UNIT_TOLERANCE for v in (row, col))
    if not unit or abs(float(np.dot(row, col))) > _UNIT_TOLERANCE:
        raise FactoryError(
            f"orientation: expected two orthogonal unit vectors, got {tuple(orientation)}"
        )
    return row, col, np.cross(row, col)


def make_ct_series(
    volume: npt.ArrayLike,
    *,
    identity: StudyIdentity,
    spacing_mm: tuple[float, float, float] = (1.0, 0.5, 0.5),
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    orientation: tuple[float, float, float, float, float, float] = AXIAL,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    bits_stored: int = 12,
    laterality: str = "B",
    series_uid: str | None = None,
    series_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Dataset]:
    """One CT image per slice of ``volume[z, y, x]`` (Hounsfield units).

    ``spacing_mm`` is (slice, row, column) spacing, ``origin_mm`` the patient
    position (x, y, z) of the first voxel of slice 0, and slice k lies at
    ``origin + k * spacing_z * (row_cosines x column_cosines)``. Slice Thickness
    equals the slice spacing. SOP Instance UIDs derive from the series UID and
    slice number, and the Frame of Reference UID from the series UID.
    """
    arr = check_array(volume, 3, "volume")
    dz, dy, dx = _positive(spacing_mm, 3, "spacing_mm")
    if len(origin_mm) != 3 or not all(np.isfinite(v) for v in origin_mm):
        raise FactoryError(f"origin_mm: expected 3 finite numbers, got {tuple(origin_mm)}")
    row, col, normal = _directions(orientation)
    if not (np.isfinite(rescale_slope) and rescale_slope > 0):
        raise FactoryError(f"rescale_slope: expected a positive number, got {rescale_slope}")
    if not np.isfinite(rescale_intercept):
        raise FactoryError(f"rescale_intercept: expected a finite number, got {rescale_intercept}")
    check_bits(bits_stored, 12, 16)
    side = check_laterality(laterality)
    check_transfer_syntax(transfer_syntax)
    stored = np.rint((arr.astype(np.float64) - rescale_intercept) / rescale_slope)
    top = (1 << bits_stored) - 1
    if stored.min() < 0 or stored.max() > top:
        lo, hi = rescale_intercept, rescale_intercept + top * rescale_slope
        raise FactoryError(
            f"volume: values {float(arr.min())}..{float(arr.max())} HU do not fit "
            f"{bits_stored}-bit stored values ({lo}..{hi} HU with this slope and intercept)"
        )
    series_uid = series_uid or generate_uid()
    frame_of_reference = generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])
    origin = np.asarray(origin_mm, dtype=np.float64)
    slices = []
    for k in range(arr.shape[0]):
        ds = new_image(
            identity,
            sop_class_uid=CT_IMAGE,
            modality="CT",
            series_uid=series_uid,
            series_number=series_number,
            instance_number=k + 1,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "FFS"
        set_anatomy(ds, side, image_laterality=False)
        # Frame of Reference and Image Plane modules.
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        position = origin + k * dz * normal
        ds.ImagePositionPatient = [ds_number(v) for v in position]
        ds.ImageOrientationPatient = [ds_number(v) for v in np.concatenate([row, col])]
        ds.PixelSpacing = [ds_number(dy), ds_number(dx)]
        ds.SliceThickness = ds_number(dz)
        ds.SliceLocation = ds_number(float(np.dot(position, normal)))
        # CT Image module.
        ds.AcquisitionNumber = 1
        ds.KVP = "120"
        ds.RescaleIntercept = ds_number(rescale_intercept)
        ds.RescaleSlope = ds_number(rescale_slope)
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = _WINDOW
        ds.WindowCenterWidthExplanation = "BONE"
        ds.LossyImageCompression = "00"
        set_pixels(ds, stored[k].astype(np.uint16), bits_stored, "MONOCHROME2")
        slices.append(encode(ds, transfer_syntax))
    return slices
