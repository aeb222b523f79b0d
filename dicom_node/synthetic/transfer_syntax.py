"""Encoding a synthetic dataset into each transfer syntax the node accepts.

Native syntaxes only change how the dataset is written (Explicit VR Big Endian
also byte-swaps the pixel data). Compressed syntaxes encode the single frame:
JPEG (ISO 10918) through libjpeg-turbo (:mod:`dicom_node.synthetic.jpeg`), the
others through pydicom's encoder plug-ins. JPEG baseline needs 8-bit and JPEG
extended 12-bit samples; the stored values are kept when they fit and otherwise
scaled by ``(2**bits - 1) / max``, with Bits Stored, the VOI window and, for CT,
the Rescale Slope changed to match, so displayed and Hounsfield values stay put.
Lossy syntaxes set the Lossy Image Compression attributes (the ratio is against
the source's native pixel data) and, since a lossy copy is a different image, a
new SOP Instance UID derived from the old one, so encoding twice gives one UID.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    generate_uid,
)
from pydicom.valuerep import VR

from dicom_node.errors import FactoryError
from dicom_node.receive.sop_classes import TRANSFER_SYNTAXES as ACCEPTED_SYNTAXES
from dicom_node.synthetic.jpeg import JPEG_10918, encode_jpeg_frame
from dicom_node.synthetic.modules import ds_number

# Every syntax the node accepts, in one list with the receiver's.
TRANSFER_SYNTAXES = ACCEPTED_SYNTAXES
LOSSY_TRANSFER_SYNTAXES = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000}
)

_NATIVE = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
_METHOD = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
    JPEG2000: "ISO_15444_1",
}
_PRECISION = {JPEGBaseline8Bit: 8, JPEGExtended12Bit: 12}
# Modalities whose stored values map to physical units through the Rescale Slope.
_CALIBRATED = frozenset({"CT"})
# The CT Image module allows Bits Stored 12-16 only, so an 8-bit JPEG cannot carry CT.
_MIN_BITS = {"CT": 12}
# Near-lossless JPEG-LS: each sample within +-2 of the original.
_JLS_ERROR = 2
# Lossy JPEG 2000: one quality layer at a fixed compression ratio.
_J2K_RATIO = 8.0
# Left from an encapsulated source; one frame needs only the Basic Offset Table.
_STALE = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")


def check_transfer_syntax(transfer_syntax: str) -> UID:
    """The UID of ``transfer_syntax``; raise unless it is one of :data:`TRANSFER_SYNTAXES`."""
    uid = UID(transfer_syntax)
    if uid not in TRANSFER_SYNTAXES:
        raise FactoryError(f'Transfer syntax "{transfer_syntax}" is not supported')
    return uid


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """A copy of ``ds`` (one frame of unsigned grayscale pixels) in ``transfer_syntax``."""
    uid = check_transfer_syntax(transfer_syntax)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise FactoryError("encode: the dataset has no file_meta Transfer Syntax UID")
    if "PixelData" not in ds:
        raise FactoryError(f"dataset {ds.get('SOPInstanceUID', '?')} has no Pixel Data")
    if ds.get("SamplesPerPixel", 1) != 1 or ds.get("PixelRepresentation", 0) != 0:
        raise FactoryError("encode: expected unsigned single-sample (grayscale) pixels")
    frame = np.asarray(ds.pixel_array)
    if frame.ndim != 2:
        raise FactoryError(f"encode: expected a single frame, got pixel shape {frame.shape}")
    out = copy.deepcopy(ds)
    for keyword in _STALE:
        if keyword in out:
            delattr(out, keyword)
    uncompressed_bytes = frame.size * int(ds.BitsAllocated) // 8
    if uid in _PRECISION:
        frame = _narrow(out, frame, _PRECISION[uid])
    _set_native(out, frame, little_endian=uid != ExplicitVRBigEndian)
    if uid not in _NATIVE:
        compressed = _compress(out, frame, uid)
        if uid in LOSSY_TRANSFER_SYNTAXES:
            _mark_lossy(out, uid, uncompressed_bytes / compressed)
    out.file_meta.TransferSyntaxUID = uid
    return out


def _set_native(ds: Dataset, frame: npt.NDArray[np.generic], *, little_endian: bool) -> None:
    """Uncompressed pixel data in the byte order of the target syntax."""
    if int(ds.BitsAllocated) == 8:
        ds.PixelData = frame.astype(np.uint8).tobytes()
        vr = VR.OB
    else:
        ds.PixelData = frame.astype("<u2" if little_endian else ">u2").tobytes()
        vr = VR.OW
    elem = ds["PixelData"]
    elem.VR = vr
    elem.is_undefined_length = False
    ds.file_meta.TransferSyntaxUID = (
        ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    )


def _narrow(ds: Dataset, frame: npt.NDArray[np.generic], bits: int) -> npt.NDArray[np.generic]:
    """Bring the stored values to ``bits`` bits for a codec of that precision."""
    modality = str(ds.get("Modality", ""))
    if bits < _MIN_BITS.get(modality, 1):
        raise FactoryError(
            f"{modality} images need Bits Stored >= {_MIN_BITS[modality]}; "
            f"the transfer syntax carries {bits}-bit samples"
        )
    top = (1 << bits) - 1
    peak = int(frame.max())
    scale = 1.0 if peak <= top else top / peak
    narrowed = np.rint(frame.astype(np.float64) * scale).astype(
        np.uint8 if bits == 8 else np.uint16
    )
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    if scale != 1.0:
        if modality in _CALIBRATED:
            # The window applies to rescaled (Hounsfield) values, which the slope keeps.
            ds.RescaleSlope = ds_number(float(ds.RescaleSlope) / scale)
        elif "WindowCenter" in ds:
            # Rescale is the identity here, so the window is in stored values.
            ds.WindowCenter = ds_number(float(ds.WindowCenter) * scale)
            ds.WindowWidth = ds_number(max(1.0, float(ds.WindowWidth) * scale))
    return narrowed


def _compress(ds: Dataset, frame: npt.NDArray[np.generic], uid: UID) -> int:
    """Encapsulate the encoded frame in ``ds``; return the codestream's size in bytes."""
    if uid in JPEG_10918:
        data = encode_jpeg_frame(frame.astype(np.uint16), uid, int(ds.BitsStored))
    else:
        # pyjpegls, pylibjpeg-openjpeg and pylibjpeg-rle are dependencies of the
        # package; without them pydicom raises a RuntimeError naming what is missing.
        options: dict[str, Any] = {}
        if uid == JPEGLSNearLossless:
            options["jls_error"] = _JLS_ERROR
        elif uid == JPEG2000:
            options["j2k_cr"] = [_J2K_RATIO]
        data = get_encoder(uid).encode(ds, **options)
    ds.PixelData = encapsulate([data])
    elem = ds["PixelData"]
    elem.VR = VR.OB
    elem.is_undefined_length = True
    return len(data)


def _values(ds: Dataset, keyword: str) -> list[str]:
    """The values of a possibly multi-valued attribute as strings ([] when absent)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value]
    return [str(value)]


def _mark_lossy(ds: Dataset, uid: UID, ratio: float) -> None:
    """Lossy Image Compression attributes and a new SOP Instance UID for a lossy image."""
    # A second lossy step appends to the history of the first (PS3.3 C.7.6.1.1.5).
    earlier = ds.get("LossyImageCompression") == "01"
    ratios = _values(ds, "LossyImageCompressionRatio") if earlier else []
    methods = _values(ds, "LossyImageCompressionMethod") if earlier else []
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*ratios, ds_number(round(ratio, 2))]
    ds.LossyImageCompressionMethod = [*methods, _METHOD[uid]]
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "lossy", uid])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
