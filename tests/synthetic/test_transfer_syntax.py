from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_node.errors import FactoryError
from dicom_node.receive import sop_classes
from dicom_node.synthetic import (
    CR_IMAGE,
    CT_IMAGE,
    DX_FOR_PRESENTATION,
    DX_FOR_PROCESSING,
    LOSSY_TRANSFER_SYNTAXES,
    TRANSFER_SYNTAXES,
    StudyIdentity,
    encode,
    make_cr,
    make_ct_series,
    make_dx,
    write,
)
from dicom_node.synthetic.jpeg import encode_jpeg_frame

CT_SYNTAXES = [uid for uid in TRANSFER_SYNTAXES if uid != JPEGBaseline8Bit]
# (bits stored, photometric, for processing): each codec sees 10-, 12- and 16-bit data.
DX_VARIANTS = [(12, "MONOCHROME2", False), (16, "MONOCHROME1", True), (10, "MONOCHROME2", False)]
_METHODS = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
    JPEG2000: "ISO_15444_1",
}


def _expected(original: np.ndarray, bits_stored: int) -> np.ndarray:
    """The documented narrowing: kept when it fits, else scaled by (2**bits - 1) / max."""
    top = (1 << bits_stored) - 1
    peak = int(original.max())
    return original * (1.0 if peak <= top else top / peak)


def _assert_close(decoded: np.ndarray, expected: np.ndarray, bits_stored: int) -> None:
    """Lossy tolerance, as a fraction of the stored range: 2 % on average, 8 % at worst."""
    error = np.abs(decoded.astype(np.float64) - expected) / (1 << bits_stored)
    assert error.mean() <= 0.02 and error.max() <= 0.08, (error.mean(), error.max())


def _assert_same_decoding(dcmtk: np.ndarray, pydicom_: np.ndarray, uid: str) -> None:
    """Lossless decoders agree exactly; lossy DCT decoders (IJG vs libjpeg) may differ by 1."""
    tolerance = 1 if uid in LOSSY_TRANSFER_SYNTAXES else 0
    np.testing.assert_allclose(dcmtk.astype(int), pydicom_.astype(int), rtol=0, atol=tolerance)


def test_the_accepted_syntaxes_in_order() -> None:
    # The node's preference (pynetdicom takes the first of it the caller proposed in a
    # context): lossless compression, then uncompressed, lossy last.
    assert [uid for uid in TRANSFER_SYNTAXES] == [
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
    ]
    assert set(TRANSFER_SYNTAXES[-4:]) == LOSSY_TRANSFER_SYNTAXES


@pytest.mark.parametrize(("bits", "photometric", "processing"), DX_VARIANTS)
@pytest.mark.parametrize("uid", TRANSFER_SYNTAXES, ids=lambda uid: uid.name)
def test_dx_in_every_syntax(
    uid: pydicom.uid.UID,
    bits: int,
    photometric: str,
    processing: bool,
    identity: StudyIdentity,
    image: np.ndarray,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
    dcmtk_pixels: Callable[[Path], np.ndarray | None],
) -> None:
    kwargs = {
        "bits_stored": bits,
        "photometric": photometric,
        "for_processing": processing,
        "series_uid": "1.2.826.0.1.3680043.8.498.3",
    }
    native = make_dx(image, identity=identity, **kwargs)  # type: ignore[arg-type]
    original = native.pixel_array
    ds = make_dx(image, identity=identity, transfer_syntax=uid, **kwargs)  # type: ignore[arg-type]
    path = write(ds, tmp_path / "dx.dcm")

    assert dciodvfy(path) == []
    read = pydicom.dcmread(path)
    assert read.file_meta.TransferSyntaxUID == uid
    decoded = read.pixel_array
    from_dcmtk = dcmtk_pixels(path)
    if from_dcmtk is not None:
        _assert_same_decoding(from_dcmtk, decoded, uid)
    if uid in LOSSY_TRANSFER_SYNTAXES:
        _assert_close(decoded, _expected(original, read.BitsStored), read.BitsStored)
        assert read.SOPInstanceUID != native.SOPInstanceUID
    else:
        np.testing.assert_array_equal(decoded, original)
        assert read.SOPInstanceUID == native.SOPInstanceUID


@pytest.mark.parametrize("uid", CT_SYNTAXES, ids=lambda uid: uid.name)
def test_ct_in_every_syntax(
    uid: pydicom.uid.UID,
    identity: StudyIdentity,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
    dcmtk_pixels: Callable[[Path], np.ndarray | None],
) -> None:
    z, y, x = np.mgrid[0:3, 0:32, 0:32]
    volume = (-1000 + 60 * x + 10 * y + 100 * z).astype(np.int16)
    slices = make_ct_series(volume, identity=identity, transfer_syntax=uid)
    for k, ds in enumerate(slices):
        path = write(ds, tmp_path / f"ct{k}.dcm")
        assert dciodvfy(path) == []
        read = pydicom.dcmread(path)
        hu = read.pixel_array * float(read.RescaleSlope) + float(read.RescaleIntercept)
        from_dcmtk = dcmtk_pixels(path)
        if from_dcmtk is not None:
            _assert_same_decoding(from_dcmtk, read.pixel_array, uid)
        assert float(read.ImagePositionPatient[2]) == k
        if uid in LOSSY_TRANSFER_SYNTAXES:
            # A steep 60 HU/pixel ramp: 8x JPEG 2000 blurs it by a few tens of HU.
            assert np.abs(hu - volume[k]).mean() <= 20 and np.abs(hu - volume[k]).max() <= 100
        else:
            np.testing.assert_array_equal(hu, volume[k])


@pytest.mark.parametrize("uid", TRANSFER_SYNTAXES, ids=lambda uid: uid.name)
def test_cr_in_every_syntax(
    uid: pydicom.uid.UID,
    identity: StudyIdentity,
    image: np.ndarray,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    ds = make_cr(image, identity=identity, laterality="L", transfer_syntax=uid)
    assert dciodvfy(write(ds, tmp_path / "cr.dcm")) == []


def test_ct_cannot_be_jpeg_baseline(identity: StudyIdentity) -> None:
    with pytest.raises(FactoryError, match=r"CT images need Bits Stored >= 12"):
        make_ct_series(np.zeros((1, 8, 8)), identity=identity, transfer_syntax=JPEGBaseline8Bit)


def test_narrowing_ct_keeps_hounsfield_units(identity: StudyIdentity) -> None:
    volume = np.linspace(-1000, 9000, 32 * 32).reshape(1, 32, 32)
    (native,) = make_ct_series(volume, identity=identity, bits_stored=16)
    narrowed = encode(native, JPEGExtended12Bit)
    assert narrowed.BitsStored == 12
    assert float(narrowed.RescaleSlope) == pytest.approx(10024 / 4095)
    assert (narrowed.WindowCenter, narrowed.WindowWidth) == (
        native.WindowCenter,
        native.WindowWidth,
    )
    hu = narrowed.pixel_array * float(narrowed.RescaleSlope) + float(narrowed.RescaleIntercept)
    assert np.abs(hu - volume[0]).max() <= 10


def test_narrowing_dx_scales_the_window(identity: StudyIdentity, image: np.ndarray) -> None:
    native = make_dx(image, identity=identity, bits_stored=16)
    baseline = encode(native, JPEGBaseline8Bit)
    scale = 255 / int(native.pixel_array.max())
    assert (baseline.BitsAllocated, baseline.BitsStored, baseline.HighBit) == (8, 8, 7)
    assert float(baseline.WindowWidth) == pytest.approx(65536 * scale, rel=1e-6)
    assert float(baseline.WindowCenter) == pytest.approx(32768 * scale, rel=1e-6)
    assert (baseline.RescaleSlope, baseline.RescaleIntercept) == (1, 0)


@pytest.mark.parametrize("uid", sorted(LOSSY_TRANSFER_SYNTAXES), ids=lambda uid: uid.name)
def test_lossy_syntaxes_record_the_compression(
    uid: pydicom.uid.UID, identity: StudyIdentity, image: np.ndarray
) -> None:
    native = make_dx(image, identity=identity)
    first = encode(native, uid)
    again = encode(native, uid)
    assert native.LossyImageCompression == "00"
    assert first.LossyImageCompression == "01"
    assert first.LossyImageCompressionMethod == _METHODS[uid]
    assert float(first.LossyImageCompressionRatio) > 1
    # A new instance, but the same one each time: resends are not duplicates.
    assert first.SOPInstanceUID == again.SOPInstanceUID != native.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID


def test_a_second_lossy_step_extends_the_history(
    identity: StudyIdentity, image: np.ndarray
) -> None:
    twice = encode(encode(make_dx(image, identity=identity), JPEGExtended12Bit), JPEGLSNearLossless)
    assert list(twice.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_14495_1"]
    assert len(twice.LossyImageCompressionRatio) == 2
    back_to_lossless = encode(twice, ExplicitVRLittleEndian)
    assert back_to_lossless.LossyImageCompression == "01"
    np.testing.assert_array_equal(back_to_lossless.pixel_array, twice.pixel_array)


def test_near_lossless_jpeg_ls_stays_within_its_bound(
    identity: StudyIdentity, image: np.ndarray
) -> None:
    native = make_dx(image, identity=identity, bits_stored=12)
    near = encode(native, JPEGLSNearLossless)
    difference = near.pixel_array.astype(int) - native.pixel_array.astype(int)
    assert np.abs(difference).max() <= 2


@pytest.mark.parametrize("uid", [JPEGLossless, JPEGLosslessSV1], ids=lambda uid: uid.name)
@pytest.mark.parametrize("bits", [10, 12, 16])
def test_libjpeg_turbo_lossless_decodes_with_pylibjpeg_and_dcmtk(
    uid: pydicom.uid.UID,
    bits: int,
    identity: StudyIdentity,
    tmp_path: Path,
    dcmtk_pixels: Callable[[Path], np.ndarray | None],
) -> None:
    # Full-range noise exercises the predictors' modulo-2**16 wrap-around.
    noise = np.random.default_rng(bits).integers(0, 1 << bits, (48, 40), dtype=np.uint16)
    ds = make_dx(noise, identity=identity, bits_stored=bits, transfer_syntax=uid)
    path = write(ds, tmp_path / "jpeg.dcm")
    read = pydicom.dcmread(path)
    np.testing.assert_array_equal(pixel_array(read, decoding_plugin="pylibjpeg"), noise)
    np.testing.assert_array_equal(dcmtk_pixels(path), noise)


def test_big_endian_pixel_data_is_byte_swapped(identity: StudyIdentity, tmp_path: Path) -> None:
    pixels = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 16
    ds = make_dx(pixels, identity=identity, transfer_syntax=ExplicitVRBigEndian)
    assert ds.PixelData == pixels.astype(">u2").tobytes()
    read = pydicom.dcmread(write(ds, tmp_path / "be.dcm"))
    assert not read.original_encoding[1]  # read as big endian
    np.testing.assert_array_equal(read.pixel_array, pixels)


def test_deflated_file_is_compressed(identity: StudyIdentity, tmp_path: Path) -> None:
    flat = np.zeros((128, 128), dtype=np.uint16)
    plain = write(make_dx(flat, identity=identity), tmp_path / "plain.dcm")
    deflated = write(
        make_dx(flat, identity=identity, transfer_syntax=DeflatedExplicitVRLittleEndian),
        tmp_path / "deflated.dcm",
    )
    assert deflated.stat().st_size < plain.stat().st_size / 4
    np.testing.assert_array_equal(pydicom.dcmread(deflated).pixel_array, flat)


def test_unknown_syntax_is_refused(identity: StudyIdentity, image: np.ndarray) -> None:
    with pytest.raises(FactoryError, match=r'Transfer syntax "1.2.840.10008.1.2.4.201"'):
        encode(make_dx(image, identity=identity), "1.2.840.10008.1.2.4.201")


def test_encode_needs_a_grayscale_image_with_file_meta(
    identity: StudyIdentity, image: np.ndarray
) -> None:
    ds = make_dx(image, identity=identity)
    without_meta = pydicom.Dataset(ds)
    with pytest.raises(FactoryError, match="the dataset has no file_meta Transfer Syntax UID"):
        encode(without_meta, ExplicitVRLittleEndian)
    no_pixels = encode(ds, ExplicitVRLittleEndian)
    del no_pixels.PixelData
    with pytest.raises(FactoryError, match="has no Pixel Data"):
        encode(no_pixels, JPEGLossless)
    signed = encode(ds, ExplicitVRLittleEndian)
    signed.PixelRepresentation = 1
    with pytest.raises(FactoryError, match="expected unsigned single-sample"):
        encode(signed, JPEGLossless)


def test_encode_refuses_multi_frame_data(identity: StudyIdentity, image: np.ndarray) -> None:
    ds = make_dx(np.zeros((8, 8), dtype=np.uint16), identity=identity)
    ds.NumberOfFrames = 2
    ds.Rows = 4
    with pytest.raises(FactoryError, match=r"expected a single frame, got pixel shape \(2, 4, 8\)"):
        encode(ds, JPEGLossless)


def test_jpeg_encoder_only_knows_the_10918_processes() -> None:
    frame = np.zeros((8, 8), dtype=np.uint16)
    with pytest.raises(FactoryError, match=r'"1.2.840.10008.1.2.5" is not a JPEG \(ISO 10918\)'):
        encode_jpeg_frame(frame, RLELossless, 12)


def test_the_factory_covers_what_the_node_accepts() -> None:
    assert set(TRANSFER_SYNTAXES) == set(sop_classes.TRANSFER_SYNTAXES)
    for sop_class in (DX_FOR_PRESENTATION, DX_FOR_PROCESSING, CR_IMAGE, CT_IMAGE):
        assert sop_class in sop_classes.STORAGE_SOP_CLASSES
