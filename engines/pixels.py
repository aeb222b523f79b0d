"""From a DICOM radiograph to the [0, 1] picture an engine sees, and to its input size.

Modality LUT (rescale slope/intercept or a LUT sequence), then the VOI: a VOI
LUT sequence, or the first window with its VOI LUT Function (LINEAR, LINEAR_EXACT
or SIGMOID, PS3.3 C.11.2.1.2-3), else a robust percentile window (0.5-99.5 %),
also for an empty window or one whose width the standard does not allow;
MONOCHROME1 is inverted so bone is bright. Padding (Pixel Padding Value, with its range
limit) is left out of the percentile window and shown black. A picture that is blank (one
grey level), a Modality LUT giving values that are not finite, and a JPEG or JPEG-LS
codestream cut short (no end marker; libjpeg would fill the rest with grey) are refused.
Resizing first makes pixels square using Pixel Spacing (a non-positive or non-finite one is
ignored), then pads to a square and resamples bilinearly (anti-aliased when shrinking), so
anatomy keeps its shape.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from torch.nn import functional

from dicom_node.errors import DicomNodeError, describe

log = logging.getLogger(__name__)

Image = npt.NDArray[np.float32]
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")  # PS3.3 C.11.2.1.3, LINEAR the default


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
    _refuse_too_large(ds)
    refuse_broken_codestream(ds)
    try:
        stored = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
        raise PixelDataError(
            f"SOP instance {ds.get('SOPInstanceUID', '?')}: pixel data cannot be decoded "
            f"({describe(exc)})"
        ) from exc
    if stored.ndim != 2:
        raise PixelDataError(f"pixel data: expected one 2-D frame, got shape {stored.shape}")
    padding = padding_mask(stored, ds)
    try:
        with np.errstate(invalid="ignore", over="ignore"):  # NaN or inf: refused below
            values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    except (TypeError, ValueError, IndexError, AttributeError) as exc:  # an empty Rescale Slope
        raise PixelDataError(
            f"SOP instance {ds.get('SOPInstanceUID', '?')}: the Modality LUT (Rescale "
            f"Slope/Intercept or Modality LUT Sequence) is not usable ({describe(exc)})"
        ) from exc
    if not np.isfinite(values).all():  # pydicom reads a DS of NaN or inf as a number
        raise PixelDataError(
            f"SOP instance {ds.get('SOPInstanceUID', '?')}: the Modality LUT (Rescale "
            "Slope/Intercept or Modality LUT Sequence) gives values that are not finite numbers"
        )
    if (lut := _voi_lut(values, ds)) is not None:
        picture = lut
    elif (window := _window(ds)) is not None:
        picture = _apply_window(values, *window)
    else:
        # Over the image only: a collimator border of padding would squeeze the anatomy's
        # contrast into the top of the range.
        image = values if padding is None or padding.all() else values[~padding]
        low, high = np.percentile(image, (0.5, 99.5))
        picture = _stretch(values, float(low), float(high))
    if photometric == "MONOCHROME1":
        picture = 1.0 - picture
    shown = picture if padding is None else picture[~padding]
    if shown.size == 0 or float(shown.max() - shown.min()) < BLANK_RANGE:
        # A Rescale Slope of 0, a constant image, a window that saturates every pixel: an
        # engine would still answer, with a confident result for an image of no anatomy.
        raise PixelDataError(
            f"SOP instance {ds.get('SOPInstanceUID', '?')}: the displayed picture is blank "
            "(one grey level over the whole image)"
        )
    if padding is not None:
        picture[padding] = 0.0  # not image: black, whatever the photometric interpretation
    return picture.astype(np.float32)


# The most pixels a radiograph may declare: 2^25 (5792 x 5792), above any detector's (a
# 43 x 43 cm one at 0.1 mm is 4300 x 4300). Decoding allocates what the header declares:
# a 2 MB JPEG declaring 12000 x 12000 took 3.7 GB, and 300 frames of 2048^2 1.5 GB, before
# anything could refuse them.
MAX_PIXELS = 1 << 25


def _refuse_too_large(ds: Dataset) -> None:
    """Refuse, from the header, an image of several frames or over :data:`MAX_PIXELS`."""
    uid = ds.get("SOPInstanceUID", "?")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(
            f"SOP instance {uid}: Rows, Columns or Number of Frames is not a number "
            f"({describe(exc)})"
        ) from exc
    if frames != 1:
        raise PixelDataError(
            f"SOP instance {uid}: pixel data: expected one 2-D frame, got {frames} frames"
        )
    if rows * columns > MAX_PIXELS:
        raise PixelDataError(
            f"SOP instance {uid}: {rows} x {columns} pixels, more than the {MAX_PIXELS} a "
            "radiograph may have (refused before decoding)"
        )


# Below one grey level of an 8-bit display between the darkest and brightest pixel.
BLANK_RANGE = 1.0 / 255.0

# ISO 10918 (JPEG) and ISO 14495 (JPEG-LS) codestreams end with an EOI marker; libjpeg
# decodes one cut short without a word, filling the rows it lacks with grey.
_ENDS_WITH_EOI = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
})  # fmt: skip


_EOI_WINDOW = 10


# JPEG start-of-frame markers (ITU T.81 B.1.1.3; not DHT C4, JPG C8, DAC CC) and JPEG-LS's
# SOF55 (ISO 14495-1): each is followed by Lf, P, Y (rows), X (columns).
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}
_J2K_SIZ = b"\xff\x4f\xff\x51"  # SOC then SIZ (ISO 15444-1 A.5.1)
_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})


def refuse_broken_codestream(ds: Dataset) -> None:
    """Refuse, before decoding, an encapsulated frame whose codestream declares another size
    than Rows and Columns (the decoder allocates what the codestream says: a header of 512 x
    512 over a JPEG of 24000 x 24000 took 3 GB before pydicom noticed the mismatch), or a
    JPEG or JPEG-LS frame without its EOI marker (cut short, libjpeg fills the rows it lacks
    with grey; refused, as dcmtk does). The frames are split once for both."""
    syntax = _syntax(ds)
    if syntax not in _ENDS_WITH_EOI and syntax not in _J2K_SYNTAXES:
        return
    uid = ds.get("SOPInstanceUID", "?")
    declared = (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0))
    for frame in _frames(ds):  # an enhanced CT's: each decoded to what it declares
        size = _j2k_size(frame) if syntax in _J2K_SYNTAXES else _jpeg_size(frame)
        if size is None:
            raise PixelDataError(
                f"SOP instance {uid}: pixel data cannot be decoded (no image size found in "
                "its compressed frame)"
            )
        if size != declared:
            raise PixelDataError(
                f"SOP instance {uid}: the compressed pixel data declares {size[0]} x {size[1]} "
                f"pixels, the header {declared[0]} x {declared[1]} (refused before decoding)"
            )
        if syntax in _ENDS_WITH_EOI and not _ends_with_eoi(frame):
            raise PixelDataError(
                f"SOP instance {uid}: pixel data cannot be decoded (a JPEG codestream without "
                "its end marker: cut short)"
            )


def _ends_with_eoi(frame: bytes) -> bool:
    # Padding may follow the marker: any run of 00H, or a few other bytes (PS3.5 A.4: an
    # odd-length frame's pad byte, which need not be 00H, "appended after the EOI marker";
    # pydicom looks for it in the last 10 bytes). FF D9 cannot occur inside the
    # entropy-coded data, where an FF is followed by 00.
    return frame.rstrip(b"\x00").endswith(b"\xff\xd9") or b"\xff\xd9" in frame[-_EOI_WINDOW:]


def _syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _frames(ds: Dataset) -> list[bytes]:
    """The encapsulated frames of ``ds``'s Pixel Data, as the decoder will split them."""
    try:
        count = max(1, int(ds.get("NumberOfFrames") or 1))
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    except (ValueError, TypeError, struct.error) as exc:
        raise PixelDataError(
            f"SOP instance {ds.get('SOPInstanceUID', '?')}: pixel data cannot be decoded "
            f"({describe(exc)})"
        ) from exc


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG or JPEG-LS frame's start-of-frame segment, or None."""
    if frame[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(frame):
        if frame[at] != 0xFF:
            return None
        marker = frame[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            at += 2
            continue
        (length,) = struct.unpack_from(">H", frame, at + 2)
        if marker in _SOF_MARKERS:
            if at + 9 > len(frame):
                return None
            rows, columns = struct.unpack_from(">HH", frame, at + 5)
            return rows, columns
        if marker == 0xDA:  # start of scan before any frame header
            return None
        at += 2 + length
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) of the reference grid a JPEG 2000 codestream's SIZ segment declares
    (Ysiz, Xsiz), also inside a JP2 wrapper, or None. The grid, not the image on it (less
    its offset): the decoder allocates the grid, so an offset of 20000 over a 64 x 64
    image took 400 MB."""
    at = frame.find(_J2K_SIZ)  # after a JP2 wrapper's boxes, where a vendor adds one
    if at < 0 or at + 16 > len(frame):
        return None
    x_size, y_size = struct.unpack_from(">II", frame, at + 8)
    return y_size, x_size


def padding_mask(stored: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[np.bool_] | None:
    """The pixels that are padding, not image (PS3.3 C.7.5.1.1.2): stored values equal to
    Pixel Padding Value or, with a Pixel Padding Range Limit, between the two inclusive.
    None when there is no padding."""
    value, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
    if not isinstance(value, int):
        if value not in (None, ""):
            log.warning("SOP instance %s: Pixel Padding Value %r is not a number; ignored",
                        ds.get("SOPInstanceUID", "?"), value)  # fmt: skip
        return None
    if isinstance(limit, int):
        low, high = min(value, limit), max(value, limit)
        mask = (stored >= low) & (stored <= high)
    else:
        mask = stored == value
    return mask if mask.any() else None


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


# Rows and columns spaced further apart than this are a typo, not a detector.
MAX_SPACING_RATIO = 4.0


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm, or None; an unusable value counts as absent. Without a
    usable spacing in mm, Pixel Aspect Ratio (vertical\\horizontal, PS3.3 C.7.6.3.1.7)
    gives the two in proportion, which is all squaring the pixels needs (an image with 2\\1
    pixels and no spacing was read, and shown in its overlay, at half its height)."""
    for keyword in (
        "PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing", "PixelAspectRatio"
    ):  # fmt: skip
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        spacing = _positive_pair(value)
        if spacing is not None:
            return spacing
        # 0\0 or a negative spacing would divide by zero or flip the image in square_pixels;
        # a typo such as 0.15\15 would stretch it a hundredfold (gigabytes of float32).
        log.warning(
            "SOP instance %s: %s %s is not two positive spacings within %g times of each "
            "other; ignored",
            ds.get("SOPInstanceUID", "?"),
            keyword,
            list(value) if isinstance(value, MultiValue) else value,
            MAX_SPACING_RATIO,
        )
    return None


def _positive_pair(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, MultiValue) or len(value) != 2:
        return None
    try:
        row, col = float(value[0]), float(value[1])
    except (TypeError, ValueError):  # an empty value ("0.2\")
        return None
    if not all(math.isfinite(s) and s > 0 for s in (row, col)):
        return None
    if max(row, col) > MAX_SPACING_RATIO * min(row, col):
        return None
    return row, col


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


def _voi_lut(values: npt.NDArray[np.float64], ds: Dataset) -> npt.NDArray[np.float64] | None:
    """The first VOI LUT of the VOI LUT Sequence, scaled to 0..1; None when there is none or
    it is unusable (then the window, if any, applies).

    The lookup is done here (PS3.3 C.11.2.1.1), not by pydicom 3.0's ``apply_voi_lut``,
    which indexed an 8-bit LUT with 8-bit integers: every input above 255 wrapped around,
    and the picture came out as a sawtooth. A LUT whose entries stay below half its declared
    range (16 bits declared, 12 used: some vendors) is scaled by the bits it uses, as
    viewers do (cornerstone, DCMTK); else the image read nearly black."""
    if not ds.get("VOILUTSequence"):  # absent, or present with no item
        return None
    uid = ds.get("SOPInstanceUID", "?")
    try:
        entries, first, bits, table = _lut_table(ds.VOILUTSequence[0], ds)
    except (TypeError, ValueError, IndexError, AttributeError, KeyError) as exc:
        log.warning("SOP instance %s: VOI LUT Sequence not usable (%s); window used",
                    uid, describe(exc))  # fmt: skip
        return None
    # A LUT maps integer inputs: modality values (rescaled, maybe fractional) rounded; those
    # below the first mapped value take the first entry, those past the last the last one.
    indices = np.clip(np.rint(values).astype(np.int64) - first, 0, entries - 1)
    used = int(table.max()).bit_length() if table.size else 0
    if 0 < used < bits - 1:
        log.warning("SOP instance %s: VOI LUT entries use %d of the %d bits its descriptor "
                    "declares; scaled by %d", uid, used, bits, used)  # fmt: skip
        bits = used
    return _stretch(table[indices].astype(np.float64), 0.0, float(2**bits - 1))


def _lut_table(item: Dataset, ds: Dataset) -> tuple[int, int, int, npt.NDArray[np.int64]]:
    """(entries, first input mapped, bits per entry, entries as integers) of a LUT item."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    if len(descriptor) != 3:
        raise ValueError(f"LUT Descriptor has {len(descriptor)} values, not 3")
    entries, first, bits = descriptor
    entries = entries or 65536  # 0 stands for 2**16
    if first >= 2**15 and int(ds.get("PixelRepresentation", 0)) == 1:
        first -= 2**16  # the first mapped value of signed data, read as unsigned
    if not 1 <= bits <= 16:
        raise ValueError(f"LUT Descriptor's bits per entry is {bits}, not 1-16")
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words in the data set's byte order
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        table = np.frombuffer(data, dtype="<u2" if little else ">u2")
    else:
        table = np.asarray(data if isinstance(data, list | MultiValue) else [data])
    table = table.astype(np.int64)
    if table.size < entries:
        raise ValueError(f"LUT Data has {table.size} entries where its descriptor says {entries}")
    return entries, first, bits, table[:entries]


def _window(ds: Dataset) -> tuple[str, float, float] | None:
    """The first window (VOI LUT Function, centre, width); None when absent, empty or unusable."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or center == "" or width is None or width == "":
        return None
    uid = ds.get("SOPInstanceUID", "?")
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in VOI_FUNCTIONS:
        log.warning("SOP instance %s: VOILUTFunction %r is not defined; LINEAR used", uid, function)
        function = "LINEAR"
    try:
        c, w = float(center), float(width)
    except (TypeError, ValueError):
        log.warning("SOP instance %s: window centre or width is not a number; percentile "
                    "window used", uid)  # fmt: skip
        return None
    # C.11.2.1.2.1: LINEAR needs a width >= 1; C.11.2.1.3: LINEAR_EXACT and SIGMOID one > 0.
    lowest_ok = w >= 1.0 if function == "LINEAR" else w > 0.0
    if not (math.isfinite(c) and math.isfinite(w) and lowest_ok):
        log.warning(
            "SOP instance %s: window width %s (centre %s) is not valid for %s; "
            "percentile window used",
            uid,
            w,
            c,
            function,
        )
        return None
    return function, c, w


def _apply_window(
    values: npt.NDArray[np.float64], function: str, center: float, width: float
) -> npt.NDArray[np.float64]:
    """PS3.3 C.11.2.1.2-3 with the output range 0..1."""
    if function == "SIGMOID":
        # 1 / (1 + exp(-4 (x - c) / w)), written with tanh so that it cannot overflow.
        return 0.5 * (1.0 + np.tanh(2.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width == 1.0:
        # LINEAR's piecewise definition leaves no ramp at width 1: x <= c - 0.5 is the
        # minimum, anything above the maximum, a threshold (the ramp would divide by w - 1 = 0).
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _first(value: Any) -> Any:
    """The first of a multi-valued element (several windows may be given), None when empty."""
    if isinstance(value, MultiValue):
        return value[0] if len(value) else None
    return value
