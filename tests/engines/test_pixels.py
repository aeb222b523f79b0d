from __future__ import annotations

import io
import logging
import struct

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.processing import apply_modality_lut, apply_windowing
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless

from dicom_node.synthetic import StudyIdentity, make_dx
from engines.pixels import (
    PixelDataError,
    display_pixels,
    pixel_spacing,
    prepare,
    square_pixels,
    to_input,
)


def _ramp() -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (48, 1))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_display_is_bright_bone_for_both_photometrics(photometric: str) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(1), photometric=photometric)
    picture = display_pixels(ds)
    assert picture.dtype == np.float32 and picture.shape == (48, 64)
    assert picture.min() >= 0.0 and picture.max() <= 1.0
    # Left column dark, right column bright whichever way the values are stored.
    assert picture[:, 0].mean() < 0.1 and picture[:, -1].mean() > 0.9
    np.testing.assert_allclose(picture[0], np.linspace(0, 1, 64), atol=0.01)


def test_window_is_applied_in_modality_units() -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(2), bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    # Modality values run -100..8090; the window covers 1947..6043, i.e. stored 1023..3071.
    ds.WindowCenter, ds.WindowWidth = 3995, 4096
    picture = display_pixels(ds)
    assert picture[:, :15].max() == 0.0  # below the window
    assert picture[:, 48:].min() == 1.0  # above it
    assert 0.4 < picture[0, 32] < 0.6


def test_percentile_window_without_voi() -> None:
    ds = make_dx(_ramp() * 0.2 + 0.4, identity=StudyIdentity.synthetic(3))
    del ds.WindowCenter
    del ds.WindowWidth
    picture = display_pixels(ds)
    assert picture.min() == 0.0 and picture.max() == 1.0  # stretched to the used range


def test_bad_pixel_data_is_a_clear_error() -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(4))
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(PixelDataError, match="pixel data cannot be decoded"):
        display_pixels(ds)
    with pytest.raises(PixelDataError, match="no pixel data"):
        display_pixels(Dataset())
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(5))
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(PixelDataError, match="expected MONOCHROME1 or MONOCHROME2, got 'RGB'"):
        display_pixels(ds)


def test_square_pixels_and_input_size_keep_the_shape_of_anatomy() -> None:
    image = np.zeros((50, 100), dtype=np.float32)
    image[20:30, 40:60] = 1.0
    squared = square_pixels(image, (0.2, 0.1))  # rows twice as far apart as columns
    assert squared.shape == (100, 100)
    assert square_pixels(image, (0.1, 0.1)) is image
    assert square_pixels(image, None) is image
    resized = to_input(image, 32)  # padded to 100x100 (centred), then 32x32
    assert resized.shape == (32, 32)
    assert resized[:8].max() == 0.0  # the padding above the picture
    assert resized[15, 16] > 0.5  # the block stays in the centre
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(6), pixel_spacing_mm=(0.2, 0.15))
    assert pixel_spacing(ds) == (0.2, 0.15)
    assert pixel_spacing(Dataset()) is None


def _percentile_picture(ds: Dataset) -> np.ndarray:
    plain = ds.copy()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in plain:
            delattr(plain, keyword)
    return display_pixels(plain)


@pytest.mark.parametrize("empty", ["", None])
@pytest.mark.parametrize("keyword", ["WindowCenter", "WindowWidth"])
def test_an_empty_window_is_as_no_window(keyword: str, empty: str | None) -> None:
    ds = make_dx(_ramp() * 0.2 + 0.4, identity=StudyIdentity.synthetic(7))
    setattr(ds, keyword, empty)
    picture = display_pixels(ds)
    np.testing.assert_array_equal(picture, _percentile_picture(ds))
    assert picture.min() == 0.0 and picture.max() == 1.0


@pytest.mark.parametrize(
    ("function", "center", "width"),
    [
        (None, 2048, 1),  # LINEAR at width 1: a threshold at the centre
        ("LINEAR", 1000, 2),
        ("LINEAR", 2048, 4096),
        ("LINEAR_EXACT", 2048, 0.5),
        ("LINEAR_EXACT", 1500, 1000),
        ("SIGMOID", 2048, 400),
        ("SIGMOID", 1000, 4096),
    ],
)
def test_voi_lut_function_follows_the_standard(
    function: str | None, center: float, width: float
) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(8), bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = center, width
    if function is not None:
        ds.VOILUTFunction = function
    picture = display_pixels(ds)
    assert picture.min() >= 0.0 and picture.max() <= 1.0
    # pydicom's windowing maps onto the stored range 0..4095 (identity rescale); ours onto 0..1.
    values = apply_modality_lut(ds.pixel_array, ds)
    expected = apply_windowing(values, ds.copy()) / 4095.0
    np.testing.assert_allclose(picture, expected, atol=1e-6)


def test_width_one_thresholds_at_the_centre() -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(9), bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 2048, 1
    picture = display_pixels(ds)
    above = apply_modality_lut(ds.pixel_array, ds) > 2047.5
    np.testing.assert_array_equal(picture, above.astype(np.float32))


@pytest.mark.parametrize(
    ("function", "width"),
    [(None, 0.5), ("LINEAR", 0), ("LINEAR_EXACT", 0), ("SIGMOID", -10), ("LINEAR", float("inf"))],
)
def test_an_invalid_window_width_falls_back_to_the_percentile_window(
    function: str | None, width: float, caplog: pytest.LogCaptureFixture
) -> None:
    ds = make_dx(_ramp() * 0.2 + 0.4, identity=StudyIdentity.synthetic(10))
    ds.WindowWidth = width
    if function is not None:
        ds.VOILUTFunction = function
    with caplog.at_level(logging.WARNING, logger="engines.pixels"):
        picture = display_pixels(ds)
    np.testing.assert_array_equal(picture, _percentile_picture(ds))
    assert f"SOP instance {ds.SOPInstanceUID}: window width" in caplog.text
    assert str(ds.PatientName) not in caplog.text and str(ds.PatientID) not in caplog.text


def test_an_unknown_voi_lut_function_is_linear(caplog: pytest.LogCaptureFixture) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(11))
    linear = display_pixels(ds)
    ds.VOILUTFunction = "GAMMA"
    with caplog.at_level(logging.WARNING, logger="engines.pixels"):
        np.testing.assert_array_equal(display_pixels(ds), linear)
    assert f"SOP instance {ds.SOPInstanceUID}: VOILUTFunction 'GAMMA'" in caplog.text


@pytest.mark.parametrize(
    "bad",
    [
        [0.0, 0.0], [-0.2, 0.2], [0.2, float("inf")], [float("nan"), 0.2], [0.2, ""], 0.2,
        [0.15, 15.0],  # a typo: squared, the image would be a hundred times wider
    ],
)  # fmt: skip
def test_an_unusable_pixel_spacing_is_as_none(
    bad: list[float | str] | float, caplog: pytest.LogCaptureFixture
) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(12))
    del ds.ImagerPixelSpacing
    ds.PixelSpacing = bad
    with caplog.at_level(logging.WARNING, logger="engines.pixels"):
        assert pixel_spacing(ds) is None
    assert f"SOP instance {ds.SOPInstanceUID}: PixelSpacing" in caplog.text
    assert "is not two positive spacings within 4 times of each other; ignored" in caplog.text
    assert str(ds.PatientName) not in caplog.text and str(ds.PatientID) not in caplog.text
    # The input is then prepared as without spacing (it was a ZeroDivisionError).
    image = display_pixels(ds)
    np.testing.assert_array_equal(prepare(image, pixel_spacing(ds), 32)[0], to_input(image, 32))
    # An unusable PixelSpacing leaves the ImagerPixelSpacing to be used.
    ds.ImagerPixelSpacing = [0.2, 0.1]
    assert pixel_spacing(ds) == (0.2, 0.1)


def test_without_a_spacing_the_pixel_aspect_ratio_squares_the_pixels() -> None:
    # A CR or secondary capture with 2\\1 pixels and no spacing was read (and shown in its
    # overlay) at half its height.
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(13))
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelAspectRatio = [2, 1]  # vertical\\horizontal
    assert pixel_spacing(ds) == (2.0, 1.0)
    assert square_pixels(display_pixels(ds), pixel_spacing(ds)).shape == (96, 64)
    ds.NominalScannedPixelSpacing = [0.3, 0.2]  # a spacing in mm wins
    assert pixel_spacing(ds) == (0.3, 0.2)
    ds.PixelSpacing = [0.1, 0.1]
    assert pixel_spacing(ds) == (0.1, 0.1)


def _padded_dx(photometric: str, padding: dict[str, int] | None, border: bool = True) -> Dataset:
    """A 12-bit ramp (anatomy stored 2048..4095) whose left quarter is a collimator border
    stored as 0 (without ``border``: the anatomy alone), and no window: the percentile
    window applies."""
    stored = (2048 + _ramp() * 2047).astype(np.uint16)
    if border:
        stored[:, :16] = 0
    else:
        stored = np.ascontiguousarray(stored[:, 16:])
    ds = make_dx(
        stored / 4095.0, identity=StudyIdentity.synthetic(9), bits_stored=12,
        photometric=photometric,
    )  # fmt: skip
    del ds.WindowCenter, ds.WindowWidth
    ds.PixelData = stored.astype("<u2").tobytes()
    for keyword, value in (padding or {}).items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize(
    "padding",
    [{"PixelPaddingValue": 0}, {"PixelPaddingValue": 0, "PixelPaddingRangeLimit": 10}],
)
def test_padding_is_black_and_left_out_of_the_window(
    photometric: str, padding: dict[str, int]
) -> None:
    anatomy = display_pixels(_padded_dx(photometric, None, border=False))
    padded = display_pixels(_padded_dx(photometric, padding))
    assert padded[:, :16].max() == 0.0  # black, whichever way the values are stored
    # The anatomy looks as it does without the border (was: squeezed into a narrower
    # range by the border's values in the percentile window).
    np.testing.assert_allclose(padded[:, 16:], anatomy, atol=1e-6)


def test_a_padding_value_that_is_not_a_number_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = _padded_dx("MONOCHROME2", None)
    ds.add_new("PixelPaddingValue", "OB", b"\x00\x00")  # a broken header
    with caplog.at_level(logging.WARNING, logger="engines.pixels"):
        picture = display_pixels(ds)
    assert "Pixel Padding Value b'\\x00\\x00' is not a number; ignored" in caplog.text
    np.testing.assert_allclose(picture, display_pixels(_padded_dx("MONOCHROME2", None)))


def _reread(ds: Dataset, old: bytes = b"", new: bytes = b"") -> Dataset:
    """``ds`` written and read back, with ``old`` bytes replaced by ``new`` on the way: how
    a value pydicom would refuse to set reaches the node."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    assert raw.count(old) == 1 or not old
    return pydicom.dcmread(io.BytesIO(raw.replace(old, new)))


def test_a_window_that_is_not_a_number_falls_back_to_the_percentile_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = make_dx(_ramp() * 0.2 + 0.4, identity=StudyIdentity.synthetic(12))
    ds.WindowCenter = "2048"
    ds = _reread(ds, b"DS\x04\x002048", b"DS\x04\x00abcd")
    with caplog.at_level(logging.WARNING, logger="engines.pixels"):
        picture = display_pixels(ds)
    np.testing.assert_array_equal(picture, _percentile_picture(ds))
    assert "window centre or width is not a number; percentile window used" in caplog.text


def test_an_empty_or_unusable_voi_lut_sequence_leaves_the_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(13))
    windowed = display_pixels(ds)
    ds.VOILUTSequence = Sequence([])  # present, no item
    np.testing.assert_array_equal(display_pixels(_reread(ds)), windowed)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 12]
    item.LUTData = [0, 1000]  # two entries where the descriptor says four
    ds.VOILUTSequence = Sequence([item])
    with caplog.at_level(logging.WARNING, logger="engines.pixels"):
        np.testing.assert_array_equal(display_pixels(ds), windowed)
    assert "VOI LUT Sequence not usable" in caplog.text


@pytest.mark.parametrize("keyword", ["RescaleSlope", "RescaleIntercept"])
def test_an_empty_rescale_is_a_pixel_data_error(keyword: str) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(14))
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    setattr(ds, keyword, "")
    with pytest.raises(
        PixelDataError, match=r"the Modality LUT \(Rescale Slope/Intercept or Modality LUT "
        r"Sequence\) is not usable \(\w*TypeError"
    ):  # fmt: skip
        display_pixels(_reread(ds))


@pytest.mark.parametrize(
    ("old", "new"), [(b"9.25", b"NaN "), (b"-7.5", b"NaN "), (b"9.25", b"inf "), (b"-7.5", b"-inf")]
)
def test_a_rescale_that_is_not_a_finite_number_is_a_pixel_data_error(
    old: bytes, new: bytes
) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(14))
    ds.RescaleSlope, ds.RescaleIntercept = "9.25", "-7.5"
    # Was: a picture of NaN, an engine input of NaN, and the whole study failed at the engine.
    with pytest.raises(PixelDataError, match="gives values that are not finite numbers"):
        display_pixels(_reread(ds, old, new))


@pytest.mark.parametrize("case", ["slope 0", "constant", "saturating window", "all padding"])
def test_a_blank_picture_is_a_pixel_data_error(case: str) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(15), bits_stored=12)
    if case == "slope 0":
        ds.RescaleSlope, ds.RescaleIntercept = 0, 0
    elif case == "constant":
        ds = make_dx(np.full((48, 64), 0.5), identity=StudyIdentity.synthetic(15))
        del ds.WindowCenter
        del ds.WindowWidth
    elif case == "saturating window":
        ds.WindowCenter, ds.WindowWidth = 100000, 10
    else:
        ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 0, 4095
    with pytest.raises(PixelDataError, match=r"the displayed picture is blank \(one grey level"):
        display_pixels(_reread(ds))


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless])
def test_a_jpeg_codestream_cut_short_is_refused(syntax: str) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(16), transfer_syntax=syntax)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame.rstrip(b"\x00").endswith(b"\xff\xd9")  # maybe padded to an even length
    assert display_pixels(ds).shape == (48, 64)
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    # Was: decoded without a word, the missing rows grey, and analysed.
    with pytest.raises(PixelDataError, match=r"a JPEG codestream without its end marker"):
        display_pixels(ds)
    # Padding after the marker need not be 00H (PS3.5 A.4): still a whole codestream.
    ds.PixelData = encapsulate([frame.rstrip(b"\x00") + b"\xff"])
    assert display_pixels(ds).shape == (48, 64)
    ds.PixelData = encapsulate([frame.rstrip(b"\x00") + bytes(16)])  # as dcmtk decodes it
    assert display_pixels(ds).shape == (48, 64)


@pytest.mark.parametrize(
    "syntax", [JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless]
)
def test_a_codestream_larger_than_its_header_says_is_refused_before_decoding(
    syntax: str,
) -> None:
    # The decoder allocates what the codestream declares: a header of 512 x 512 over a JPEG
    # of 24000 x 24000 took 3 GB, then failed, and passed the header's pixel-count bound.
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(18), transfer_syntax=syntax)
    assert display_pixels(ds).shape == (48, 64)
    ds.Rows, ds.Columns = 24, 32
    with pytest.raises(
        PixelDataError,
        match=r"the compressed pixel data declares 48 x 64 pixels, the header 24 x 32 "
        r"\(refused before decoding\)$",
    ):
        display_pixels(ds)


@pytest.mark.parametrize(
    ("syntax", "frame"),
    [(JPEGBaseline8Bit, b"\xff\xd8\xff\xda\x00\x08" + bytes(8) + b"\xff\xd9"),  # scan, no SOF
     (JPEG2000Lossless, b"\xff\x4f" + bytes(30))],  # SOC, no SIZ
)  # fmt: skip
def test_a_compressed_frame_that_declares_no_size_is_refused(syntax: str, frame: bytes) -> None:
    # Nothing says what the decoder would allocate: refused before decoding.
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(20), transfer_syntax=syntax)
    ds.PixelData = encapsulate([frame])
    with pytest.raises(
        PixelDataError,
        match=r"pixel data cannot be decoded \(no image size found in its compressed frame\)$",
    ):
        display_pixels(ds)


def test_a_jpeg_2000_offset_counts_in_the_size_the_decoder_allocates() -> None:
    # The decoder allocates the reference grid (Xsiz x Ysiz), the image less its offset
    # was compared: a 64 x 64 image at offset 20000 passed and took 400 MB.
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(19), transfer_syntax=JPEG2000Lossless)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    at = frame.find(b"\xff\x4f\xff\x51")
    x_size, y_size = struct.unpack_from(">II", frame, at + 8)
    struct.pack_into(">IIII", frame, at + 8, x_size + 20000, y_size + 20000, 20000, 20000)
    ds.PixelData = encapsulate([bytes(frame)])
    with pytest.raises(PixelDataError, match=r"declares 20048 x 20064 pixels, the header 48 x 64"):
        display_pixels(ds)


def test_native_pixel_data_under_a_jpeg_syntax_is_a_pixel_data_error() -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(17))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    with pytest.raises(PixelDataError, match=r"pixel data cannot be decoded \(\w*"):
        display_pixels(ds)


def test_a_voi_lut_maps_the_modality_values() -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(15), bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = [4095 - v for v in range(4096)]  # an inverting LUT, 12 bits out
    ds.VOILUTSequence = Sequence([item])
    stored = ds.pixel_array.astype(np.float64)
    np.testing.assert_allclose(display_pixels(ds), 1.0 - stored / 4095, atol=1e-6)
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, 0.25  # fractional inputs: rounded to the LUT
    expected = 1.0 - np.rint(stored * 0.5 + 0.25) / 4095
    np.testing.assert_allclose(display_pixels(ds), expected, atol=1e-6)


def test_an_8_bit_voi_lut_maps_every_input_not_its_low_byte() -> None:
    # pydicom 3.0's apply_voi_lut indexed an 8-bit LUT with uint8: 4000 read as 4000 % 256.
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(16), bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = [v // 16 for v in range(4096)]  # identity-shaped, 8 bits out
    ds.VOILUTSequence = Sequence([item])
    stored = ds.pixel_array.astype(np.int64)
    picture = display_pixels(ds)
    np.testing.assert_allclose(picture, (stored // 16) / 255, atol=1e-6)
    assert np.all(np.diff(picture[0][np.argsort(stored[0])]) >= 0)  # monotone, no sawtooth


def test_a_voi_lut_using_fewer_bits_than_declared_is_scaled_by_those_it_uses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 16 bits declared, 0-4095 given (some vendors): divided by 65535 the image read black.
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(17), bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", np.arange(4096, dtype="<u2").tobytes())
    ds.VOILUTSequence = Sequence([item])
    with caplog.at_level(logging.WARNING, logger="engines.pixels"):
        picture = display_pixels(_reread(ds))
    np.testing.assert_allclose(picture, ds.pixel_array / 4095, atol=1e-6)
    assert "VOI LUT entries use 12 of the 16 bits its descriptor declares" in caplog.text


@pytest.mark.parametrize(
    ("descriptor", "data", "why"),
    [
        # Short OW data raised struct.error, 9 bits NotImplementedError: neither was caught,
        # and the study failed as an internal error.
        ([4096, 0, 16], np.arange(1000, dtype="<u2").tobytes(),
         "LUT Data has 1000 entries where its descriptor says 4096"),
        ([4096, 0, 17], np.arange(4096, dtype="<u2").tobytes(),
         "LUT Descriptor's bits per entry is 17, not 1-16"),
    ],
)  # fmt: skip
def test_a_malformed_voi_lut_leaves_the_window(
    descriptor: list[int], data: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(18), bits_stored=12)
    windowed = display_pixels(ds)
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.add_new("LUTData", "OW", data)
    ds.VOILUTSequence = Sequence([item])
    with caplog.at_level(logging.WARNING, logger="engines.pixels"):
        np.testing.assert_array_equal(display_pixels(ds), windowed)
    assert f"VOI LUT Sequence not usable (ValueError: {why}); window used" in caplog.text


def test_a_9_bit_voi_lut_is_applied() -> None:
    ds = make_dx(_ramp(), identity=StudyIdentity.synthetic(19), bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 9]
    item.LUTData = [v // 8 for v in range(4096)]
    ds.VOILUTSequence = Sequence([item])
    np.testing.assert_allclose(display_pixels(ds), (ds.pixel_array // 8) / 511, atol=1e-6)
