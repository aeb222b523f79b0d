"""Projection radiographs of the hip: Digital X-Ray (DX) and Computed Radiography (CR).

Pixels are given in display sense (higher = brighter) and stored per
:mod:`dicom_node.synthetic.pixels`; for MONOCHROME1 the stored values are inverted
(``2**bits_stored - 1 - v``) so a viewer shows the same picture either way.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.errors import FactoryError
from dicom_node.synthetic.identity import StudyIdentity
from dicom_node.synthetic.modules import (
    Laterality,
    check_laterality,
    check_photometric,
    code_item,
    ds_number,
    new_image,
    set_anatomy,
    set_pixels,
)
from dicom_node.synthetic.pixels import check_array, check_bits, to_stored
from dicom_node.synthetic.transfer_syntax import check_transfer_syntax, encode

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")

VIEWS = ("AP", "LATERAL")
_CALIBRATION = "Synthetic phantom drawn at this spacing in the patient plane"


class _View(NamedTuple):
    position: str  # View Position
    code: str  # SNOMED CT code from CID 4010 "DX View"
    meaning: str
    orientation: list[str]  # Patient Orientation (row, column directions)


def _view(view: str, laterality: Laterality) -> _View:
    """How the image was projected and how it is displayed.

    AP is displayed as usual (patient's left on the viewer's right, feet down). A
    lateral hip is taken with the examined side against the detector (right
    lateral for the right hip; a lateral pelvis, B, follows the left-lateral
    convention) and displayed as seen from the X-ray tube.
    """
    if view == "AP":
        return _View("AP", "399348003", "antero-posterior", ["L", "F"])
    if view == "LATERAL":
        if laterality == "R":
            return _View("RL", "399198007", "right lateral", ["P", "F"])
        return _View("LL", "399173006", "left lateral", ["A", "F"])
    raise FactoryError(f'view: expected one of {VIEWS}, got "{view}"')


def _projection(
    pixels: npt.ArrayLike,
    *,
    identity: StudyIdentity,
    sop_class_uid: str,
    view: str,
    laterality: str,
    pixel_spacing_mm: tuple[float, float],
    photometric: str,
    bits_stored: int,
    series_uid: str | None,
    series_number: int,
    instance_number: int,
    transfer_syntax: str,
) -> tuple[Dataset, _View]:
    """The modules DX and CR share, after checking every argument."""
    arr = check_array(pixels, 2, "pixels")
    side = check_laterality(laterality)
    projection = _view(view, side)
    mono = check_photometric(photometric)
    check_bits(bits_stored, 10, 16)
    check_transfer_syntax(transfer_syntax)
    if len(pixel_spacing_mm) != 2 or not all(np.isfinite(s) and s > 0 for s in pixel_spacing_mm):
        raise FactoryError(
            f"pixel_spacing_mm: expected two positive spacings, got {tuple(pixel_spacing_mm)}"
        )
    stored = to_stored(arr, bits_stored)
    if mono == "MONOCHROME1":
        stored = ((1 << bits_stored) - 1 - stored).astype(np.uint16)
    ds = new_image(
        identity,
        sop_class_uid=sop_class_uid,
        modality="CR" if sop_class_uid == CR_IMAGE else "DX",
        series_uid=series_uid,
        series_number=series_number,
        instance_number=instance_number,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = projection.orientation
    set_anatomy(ds, side, image_laterality=sop_class_uid != CR_IMAGE)
    set_pixels(ds, stored, bits_stored, mono)
    spacing = [ds_number(float(s)) for s in pixel_spacing_mm]  # DS: at most 16 characters
    # Basic Pixel Spacing Calibration macro: the phantom is drawn at this spacing,
    # so the detector and patient planes coincide (magnification 1).
    ds.ImagerPixelSpacing = spacing
    ds.PixelSpacing = spacing
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = _CALIBRATION
    # Rescale is the identity (the DX Image module requires it), so windows are in stored values.
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if mono == "MONOCHROME1" else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.ViewPosition = projection.position
    return ds, projection


def _set_window(ds: Dataset, bits_stored: int) -> None:
    """A VOI window spanning the whole stored range."""
    ds.WindowCenter = 1 << (bits_stored - 1)
    ds.WindowWidth = 1 << bits_stored
    ds.WindowCenterWidthExplanation = "FULL RANGE"


def make_dx(
    pixels: npt.ArrayLike,
    *,
    identity: StudyIdentity,
    view: str = "AP",
    laterality: str = "B",
    pixel_spacing_mm: tuple[float, float] = (0.15, 0.15),
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    for_processing: bool = False,
    series_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A Digital X-Ray image (For Presentation, or For Processing) of a hip or the pelvis.

    ``laterality`` B means both hips (Body Part Examined PELVIS, Image Laterality
    B), L or R one hip (HIP). The SOP Instance UID derives from the series UID
    and ``instance_number`` (the series UID is new when not given).
    """
    ds, projection = _projection(
        pixels,
        identity=identity,
        sop_class_uid=DX_FOR_PROCESSING if for_processing else DX_FOR_PRESENTATION,
        view=view,
        laterality=laterality,
        pixel_spacing_mm=pixel_spacing_mm,
        photometric=photometric,
        bits_stored=bits_stored,
        series_uid=series_uid,
        series_number=series_number,
        instance_number=instance_number,
        transfer_syntax=transfer_syntax,
    )
    # DX Series module.
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    # DX Image module.
    ds.PixelIntensityRelationship = "LIN"
    # PS3.3 C.8.11.3.1.2: +1 is lower values for less X-ray intensity (bone low), as a
    # MONOCHROME1 image stores it; the MONOCHROME2 picture stores bone high: -1.
    ds.PixelIntensityRelationshipSign = 1 if ds.PhotometricInterpretation == "MONOCHROME1" else -1
    if not for_processing:
        # A VOI window may only be present in, and is required by, For Presentation images.
        _set_window(ds, bits_stored)
    # DX Detector module.
    ds.DetectorType = "DIRECT"
    # DX Positioning module.
    ds.PositionerType = "COLUMN"
    ds.ViewCodeSequence = Sequence([code_item(projection.code, projection.meaning)])
    ds.EstimatedRadiographicMagnificationFactor = 1.0
    # Acquisition Context module: nothing to record, but the sequence is Type 2.
    ds.AcquisitionContextSequence = Sequence([])
    return encode(ds, transfer_syntax)


def make_cr(
    pixels: npt.ArrayLike,
    *,
    identity: StudyIdentity,
    view: str = "AP",
    laterality: str = "B",
    pixel_spacing_mm: tuple[float, float] = (0.15, 0.15),
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    series_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A Computed Radiography image of a hip (L, R) or the pelvis (B).

    The CR IOD has no Image Laterality or View Code Sequence: the side of a hip is
    the series Laterality and the view is View Position only.
    """
    ds, _ = _projection(
        pixels,
        identity=identity,
        sop_class_uid=CR_IMAGE,
        view=view,
        laterality=laterality,
        pixel_spacing_mm=pixel_spacing_mm,
        photometric=photometric,
        bits_stored=bits_stored,
        series_uid=series_uid,
        series_number=series_number,
        instance_number=instance_number,
        transfer_syntax=transfer_syntax,
    )
    _set_window(ds, bits_stored)
    return encode(ds, transfer_syntax)
