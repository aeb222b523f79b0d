"""Preprocessing on phantom DX files: decoding every syntax, hip regions, inputs and errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_node.models import SourceImage
from dicom_node.preprocess import (
    ImageCache,
    PreparedImage,
    PreprocessError,
    hip_input,
    load_image,
    normalise,
)
from dicom_node.route.plan import source_image
from engines.manifest import Preprocessing
from engines.phantoms.studies import PhantomStudy, write_study
from engines.pixels import prepare

THA = "total_hip_arthroplasty"
SIZE = 64  # one hip region: the pelvis is 64 x 128, the lateral 64 x 64


def phantom(folder: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> PhantomStudy:
    return write_study(
        folder, 5, "normal", THA, failure={"L": "aseptic_loosening"}, size=SIZE,
        transfer_syntax=transfer_syntax,
    )  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    return phantom(tmp_path_factory.mktemp("phantom"))


def source(path: Path, header_from: Path | None = None) -> SourceImage:
    """The routing record of ``path`` (its header read from ``header_from`` when given)."""
    return source_image(pydicom.dcmread(header_from or path), path, "PACS")


def pelvis(study: PhantomStudy) -> Path:
    return study.files[0]


def lateral(study: PhantomStudy) -> Path:
    return study.files[1]


# --- decoding and regions -----------------------------------------------------


def test_ap_pelvis_shows_both_hips(study: PhantomStudy) -> None:
    src = source(pelvis(study))
    assert (src.view, src.laterality) == ("AP", "B")
    image = load_image(src)
    assert image.source is src
    assert image.picture.shape == (SIZE, 2 * SIZE)
    assert image.picture.dtype == np.float32
    assert 0.0 <= float(image.picture.min()) < float(image.picture.max()) <= 1.0
    assert image.spacing == pytest.approx((200.0 / SIZE, 200.0 / SIZE))
    right, left = image.regions
    assert (right.side, right.rows, right.columns, right.mirrored) == ("R", SIZE, (0, SIZE), False)
    assert (left.side, left.rows, left.columns, left.mirrored) == (
        "L",
        SIZE,
        (SIZE, 2 * SIZE),
        True,
    )
    assert image.region("R") is right and image.region("L") is left
    np.testing.assert_array_equal(left.cut(image.picture), np.fliplr(image.picture[:, SIZE:]))
    # The header is kept for the reports, the pixel data is not.
    assert isinstance(image.header, Dataset) and "PixelData" not in image.header
    assert image.header.SOPInstanceUID == src.sop_instance_uid
    assert image.header.StudyInstanceUID == study.identity.study_uid


def test_lateral_shows_one_mirrored_hip(study: PhantomStudy) -> None:
    src = source(lateral(study))
    assert src.laterality == "L"
    image = load_image(src)
    assert image.picture.shape == (SIZE, SIZE)
    [region] = image.regions
    assert (region.side, region.columns, region.mirrored) == ("L", (0, SIZE), True)
    np.testing.assert_array_equal(region.cut(image.picture), np.fliplr(image.picture))
    uid = re.escape(src.sop_instance_uid)
    with pytest.raises(
        PreprocessError, match=rf"^SOP instance {uid}: shows no R hip \(laterality L\)$"
    ):
        image.region("R")


def test_image_without_laterality_is_taken_as_both_hips(
    study: PhantomStudy, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(pelvis(study))
    del ds.ImageLaterality
    if "Laterality" in ds:
        del ds.Laterality
    path = tmp_path / "no-laterality.dcm"
    ds.save_as(path, enforce_file_format=True)
    src = source(path)
    assert src.laterality == ""
    image = load_image(src)
    assert [r.side for r in image.regions] == ["R", "L"]
    uid = re.escape(src.sop_instance_uid)
    with pytest.raises(
        PreprocessError, match=rf"^SOP instance {uid}: shows no X hip \(laterality none\)$"
    ):
        image.region("X")


def _reoriented(path: Path, tmp_path: Path, name: str, orientation: list[str], flip: str) -> Path:
    """The image with its pixels flipped (``lr``, ``ud`` or both) and Patient Orientation
    saying so: the same patient, stored the other way round."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if "lr" in flip:
        pixels = np.fliplr(pixels)
    if "ud" in flip:
        pixels = np.flipud(pixels)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.PatientOrientation = orientation
    out = tmp_path / f"{name}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize(
    ("orientation", "flip"),
    [(["R", "F"], "lr"), (["L", "H"], "ud"), (["R", "H"], "lrud"), (["RA", "FL"], "lr")],
    ids=["PA", "upside-down", "both", "oblique-codes"],
)
def test_hips_follow_patient_orientation_not_the_image_halves(
    study: PhantomStudy, tmp_path: Path, orientation: list[str], flip: str
) -> None:
    # A PA view (or a detector read out flipped) shows the patient's right hip in the
    # image's right half: each hip must get the same input as in the AP-oriented image.
    pre = Preprocessing(size=32)
    as_ap = load_image(source(pelvis(study)))
    stored = load_image(source(_reoriented(pelvis(study), tmp_path, "pelvis", orientation, flip)))
    for side in "RL":
        np.testing.assert_array_equal(
            hip_input(stored, side, pre).pixels, hip_input(as_ap, side, pre).pixels
        )
    # Heat maps go back where the hip is in the stored image.
    canvas = np.zeros_like(stored.picture)
    right = stored.region("R")
    right.place(right.cut(stored.picture), canvas)
    expected = np.zeros_like(stored.picture)
    columns = slice(SIZE, 2 * SIZE) if "lr" in flip else slice(0, SIZE)
    expected[:, columns] = stored.picture[:, columns]
    np.testing.assert_array_equal(canvas, expected)
    # A single-hip image stored flipped is mirrored the other way.
    side_view = load_image(source(_reoriented(lateral(study), tmp_path, "lat", orientation, flip)))
    np.testing.assert_array_equal(
        hip_input(side_view, "L", pre).pixels,
        hip_input(load_image(source(lateral(study))), "L", pre).pixels,
    )


LOSSLESS = [
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    JPEGLosslessSV1,
]


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda s: s.keyword)
def test_every_lossless_syntax_decodes_to_the_same_picture(
    study: PhantomStudy, tmp_path: Path, syntax: str
) -> None:
    encoded = phantom(tmp_path, syntax)
    for plain, coded in zip(study.files, encoded.files, strict=True):
        assert pydicom.dcmread(coded).file_meta.TransferSyntaxUID == syntax
        expected, got = load_image(source(plain)), load_image(source(coded))
        np.testing.assert_array_equal(got.picture, expected.picture)
        assert got.regions == expected.regions
        assert got.spacing == expected.spacing


def test_near_lossless_jpeg_ls_stays_within_its_error_bound(
    study: PhantomStudy, tmp_path: Path
) -> None:
    encoded = phantom(tmp_path, JPEGLSNearLossless)
    for plain, coded in zip(study.files, encoded.files, strict=True):
        expected, got = load_image(source(plain)), load_image(source(coded))
        # Each stored 12-bit sample within +-2 of the original.
        np.testing.assert_allclose(got.picture, expected.picture, rtol=0, atol=2.5 / 4095)


# --- engine inputs --------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 96])
def test_hip_input_is_a_square_float_picture_in_unit_range(study: PhantomStudy, size: int) -> None:
    image = load_image(source(pelvis(study)))
    pre = Preprocessing(size=size)
    for side in ("R", "L"):
        hip = hip_input(image, side, pre)
        assert hip.image is image and hip.region is image.region(side)
        assert hip.pixels.shape == (size, size)
        assert hip.pixels.dtype == np.float32
        assert float(hip.pixels.min()) >= 0.0 and float(hip.pixels.max()) <= 1.0
        assert (hip.geometry.region_shape, hip.geometry.square_shape, hip.geometry.size) == (
            (SIZE, SIZE),
            (SIZE, SIZE),
            size,
        )
        expected, _ = prepare(hip.region.cut(image.picture), image.spacing, size)
        np.testing.assert_array_equal(hip.pixels, expected)
    left = hip_input(image, "L", pre)
    right = hip_input(image, "R", pre)
    assert not np.array_equal(left.pixels, right.pixels)
    normalised = normalise(right.pixels, pre)
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, (right.pixels - 0.5) / 0.25, rtol=1e-6)


def test_hip_input_of_a_side_the_image_does_not_show_raises(study: PhantomStudy) -> None:
    src = source(lateral(study))
    image = load_image(src)
    with pytest.raises(
        PreprocessError, match=rf"^SOP instance {re.escape(src.sop_instance_uid)}: shows no R hip"
    ):
        hip_input(image, "R", Preprocessing(size=32))


def test_to_region_maps_an_input_map_back_onto_the_region(study: PhantomStudy) -> None:
    image = load_image(source(pelvis(study)))
    hip = hip_input(image, "L", Preprocessing(size=SIZE))
    region = hip.region.cut(image.picture)
    # Same edge: the input is the region itself, and the way back is exact.
    np.testing.assert_allclose(hip.geometry.to_region(hip.pixels), region, atol=1e-5)
    # An engine's coarse map comes back at the region's size.
    coarse = np.zeros((8, 8), dtype=np.float32)
    coarse[:, :4] = 1.0  # the left half of the canonical (mirrored) hip
    back = hip.geometry.to_region(coarse)
    assert back.shape == region.shape and back.dtype == np.float32
    assert float(back[:, :28].min()) > 0.99 and float(back[:, 36:].max()) < 0.01
    assert hip.geometry.to_region(np.full((8, 8), 0.25)) == pytest.approx(0.25)


def test_to_region_drops_the_padding_of_a_non_square_region(
    study: PhantomStudy, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(lateral(study))
    ds.PixelSpacing = [1.0, 2.0]  # columns twice as wide: the squared region is 64 x 128
    path = tmp_path / "wide.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = load_image(source(path))
    hip = hip_input(image, "L", Preprocessing(size=32))
    assert hip.geometry.region_shape == (SIZE, SIZE)
    assert hip.geometry.square_shape == (SIZE, 2 * SIZE)
    # The region fills rows 8..24 of the 32 x 32 input; the rest is padding.
    padding = np.ones((32, 32), dtype=np.float32)
    padding[8:24] = 0.0
    back = hip.geometry.to_region(padding)
    assert back.shape == (SIZE, SIZE)
    assert float(back[4:-4].max()) < 0.01
    content = 1.0 - padding
    assert float(hip.geometry.to_region(content)[4:-4].min()) > 0.99
    # The input itself goes back to (a smoothed copy of) the region.
    round_trip = hip.geometry.to_region(hip.pixels)
    region = hip.region.cut(image.picture)
    assert float(np.abs(round_trip - region).mean()) < 0.05


# --- errors ---------------------------------------------------------------------


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def rewrite(path: Path, out: Path, **changes: object) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_a_file_that_is_not_dicom(study: PhantomStudy, tmp_path: Path) -> None:
    path = tmp_path / "note.dcm"
    path.write_text("this is a text file, not DICOM\n" * 20)
    src = source(path, header_from=pelvis(study))
    uid = re.escape(src.sop_instance_uid)
    with pytest.raises(PreprocessError, match=rf"^SOP instance {uid}: cannot read note\.dcm \("):
        load_image(src)


def test_a_missing_file(study: PhantomStudy, tmp_path: Path) -> None:
    src = source(tmp_path / "gone.dcm", header_from=pelvis(study))
    uid = re.escape(src.sop_instance_uid)
    with pytest.raises(PreprocessError, match=rf"^SOP instance {uid}: cannot read gone\.dcm \("):
        load_image(src)


def test_truncated_native_pixel_data(study: PhantomStudy, tmp_path: Path) -> None:
    ds = pydicom.dcmread(pelvis(study))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    path = tmp_path / "short.dcm"
    ds.save_as(path, enforce_file_format=True)
    uid = re.escape(uid_of(path))
    with pytest.raises(
        PreprocessError, match=rf"^SOP instance {uid}: .*pixel data cannot be decoded"
    ):
        load_image(source(path))


def test_truncated_file(study: PhantomStudy, tmp_path: Path) -> None:
    data = pelvis(study).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 1000])
    uid = re.escape(uid_of(pelvis(study)))
    with pytest.raises(
        PreprocessError, match=rf"^SOP instance {uid}: .*pixel data cannot be decoded"
    ):
        load_image(source(path, header_from=pelvis(study)))


@pytest.mark.parametrize(
    "syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless], ids=lambda s: s.keyword
)
def test_garbage_compressed_pixel_data(tmp_path: Path, syntax: str) -> None:
    [_, coded] = phantom(tmp_path / "in", syntax).files
    ds = pydicom.dcmread(coded)
    ds.PixelData = encapsulate([b"\x00\x01not a codestream" * 40])
    path = tmp_path / "garbage.dcm"
    ds.save_as(path, enforce_file_format=True)
    uid = re.escape(uid_of(path))
    with pytest.raises(
        PreprocessError, match=rf"^SOP instance {uid}: .*pixel data cannot be decoded"
    ):
        load_image(source(path))


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=lambda s: s.keyword)
def test_truncated_compressed_frame(tmp_path: Path, syntax: str) -> None:
    [_, coded] = phantom(tmp_path / "in", syntax).files
    ds = pydicom.dcmread(coded)
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    path = tmp_path / "half.dcm"
    ds.save_as(path, enforce_file_format=True)
    uid = re.escape(uid_of(path))
    with pytest.raises(
        PreprocessError, match=rf"^SOP instance {uid}: .*pixel data cannot be decoded"
    ):
        load_image(source(path))


def three_samples(path: Path, out: Path, photometric: str) -> Path:
    ds = pydicom.dcmread(path)
    grey = ds.pixel_array
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.PixelData = np.repeat(grey[..., None], 3, axis=2).astype(np.uint16).tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out


def test_monochrome_image_with_three_samples(study: PhantomStudy, tmp_path: Path) -> None:
    path = three_samples(lateral(study), tmp_path / "mono3.dcm", "MONOCHROME2")
    uid = re.escape(uid_of(path))
    with pytest.raises(
        PreprocessError,
        match=rf"^SOP instance {uid}: pixel data: expected one 2-D frame, got shape \(64, 64, 3\)$",
    ):
        load_image(source(path))


def test_rgb_photometric(study: PhantomStudy, tmp_path: Path) -> None:
    path = three_samples(lateral(study), tmp_path / "rgb.dcm", "RGB")
    uid = re.escape(uid_of(path))
    with pytest.raises(
        PreprocessError,
        match=rf"^SOP instance {uid}: PhotometricInterpretation: expected MONOCHROME1 or MONOCHROME2, got 'RGB'$",
    ):
        load_image(source(path))


def test_multi_frame_image(study: PhantomStudy, tmp_path: Path) -> None:
    ds = pydicom.dcmread(lateral(study))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    path = tmp_path / "two-frames.dcm"
    ds.save_as(path, enforce_file_format=True)
    uid = re.escape(uid_of(path))
    # Refused from the header, before decoding: 300 frames of 2048^2 took 1.5 GB first.
    with pytest.raises(
        PreprocessError,
        match=rf"^SOP instance {uid}: pixel data: expected one 2-D frame, got 2 frames$",
    ):
        load_image(source(path))


def test_an_image_declaring_more_pixels_than_a_radiograph_is_refused_before_decoding(
    study: PhantomStudy, tmp_path: Path
) -> None:
    # A 2 MB JPEG declaring 12000 x 12000 took 3.7 GB to decode, 30000 x 30000 failed the
    # job with a MemoryError. The header is enough to refuse it (the data here is short).
    ds = pydicom.dcmread(lateral(study))
    ds.Rows = ds.Columns = 12000
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    uid = re.escape(uid_of(path))
    with pytest.raises(
        PreprocessError,
        match=rf"^SOP instance {uid}: 12000 x 12000 pixels, more than the 33554432 a "
        r"radiograph may have \(refused before decoding\)$",
    ):
        load_image(source(path))


def test_image_without_pixel_data(study: PhantomStudy, tmp_path: Path) -> None:
    ds = pydicom.dcmread(lateral(study))
    del ds.PixelData
    path = tmp_path / "header-only.dcm"
    ds.save_as(path, enforce_file_format=True)
    uid = re.escape(uid_of(path))
    with pytest.raises(PreprocessError, match=rf"^SOP instance {uid}: .*no pixel data$"):
        load_image(source(path))


def test_truncated_deflated_file(tmp_path: Path) -> None:
    [pelvis_file, _] = phantom(tmp_path / "in", DeflatedExplicitVRLittleEndian).files
    data = pelvis_file.read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 32])  # into the deflated pixel data, not only its end
    uid = re.escape(uid_of(pelvis_file))
    with pytest.raises(PreprocessError, match=rf"^SOP instance {uid}: "):
        load_image(source(path, header_from=pelvis_file))


# --- the cache ------------------------------------------------------------------


def test_image_cache_decodes_each_path_once(study: PhantomStudy, tmp_path: Path) -> None:
    copy = tmp_path / "pelvis.dcm"
    copy.write_bytes(pelvis(study).read_bytes())
    cache = ImageCache()
    assert cache.images() == ()
    src = source(copy)
    first = cache.get(src)
    assert isinstance(first, PreparedImage)
    copy.unlink()  # a second decode would fail now
    assert cache.get(src) is first
    assert cache.get(source_image(first.header, copy, "OTHER")) is first  # keyed by path
    other = cache.get(source(lateral(study)))
    assert other is not first
    assert cache.images() == (first, other)


def test_image_cache_does_not_keep_failures(study: PhantomStudy, tmp_path: Path) -> None:
    path = tmp_path / "late.dcm"
    src = source(path, header_from=pelvis(study))
    cache = ImageCache()
    with pytest.raises(PreprocessError, match=r"cannot read late\.dcm"):
        cache.get(src)
    assert cache.images() == ()
    path.write_bytes(pelvis(study).read_bytes())  # the file arrives: the next get decodes it
    assert cache.get(src).picture.shape == (SIZE, 2 * SIZE)
