"""Reading a CT series: geometry, Hounsfield units, transfer syntaxes, refusals."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the name SimpleITK's documentation uses)
from ct_files import IDENTITY, NORMAL, ORIGIN, SERIES, SPACING, TILTED, random_hu, write_series
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)

from dicom_node.synthetic import (
    LOSSY_TRANSFER_SYNTAXES,
    TRANSFER_SYNTAXES,
    make_ct_series,
)
from engines.volumes import AIR_HU, CtVolume, VolumeError, read_ct_series


def _edit(path: Path, **values: Any) -> None:
    ds = dcmread(path)
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def _position(path: Path) -> list[float]:
    return [float(v) for v in dcmread(path, stop_before_pixels=True).ImagePositionPatient]


# Geometry and values ------------------------------------------------------------------


def test_tilted_flipped_series_has_its_geometry_and_hu(tmp_path: Path) -> None:
    volume = random_hu()
    paths = write_series(tmp_path, volume)
    ct = read_ct_series(paths, SERIES)
    assert isinstance(ct, CtVolume) and ct.series_uid == SERIES
    assert ct.size == (24, 20, 6) == ct.image.GetSize()
    np.testing.assert_allclose(ct.spacing, (0.7, 0.7, 2.5), atol=1e-6)
    np.testing.assert_allclose(ct.origin, ORIGIN, atol=1e-6)
    # Direction columns: row cosines, column cosines, slice normal.
    expected = np.column_stack([TILTED[:3], TILTED[3:], NORMAL])
    np.testing.assert_allclose(np.reshape(ct.direction, (3, 3)), expected, atol=1e-6)
    assert ct.image.GetPixelID() == sitk.sitkFloat32
    # Every slice's first voxel is where its file says.
    for k, path in enumerate(paths):
        point = ct.image.TransformIndexToPhysicalPoint((0, 0, k))
        np.testing.assert_allclose(point, _position(path), atol=1e-4)
    # Stored = HU + 1024 (Rescale Intercept -1024), read back exactly.
    assert dcmread(paths[0]).RescaleIntercept == -1024
    array = ct.array()
    assert array.dtype == np.float32 and array.shape == (6, 20, 24)
    np.testing.assert_array_equal(array, volume)


def test_slices_are_sorted_by_position_not_instance_number(tmp_path: Path) -> None:
    volume = random_hu(depth=8)
    paths = write_series(tmp_path, volume)
    expected_uids = [str(dcmread(p).SOPInstanceUID) for p in paths]
    # Instance Numbers that contradict the positions, and files in a shuffled order.
    for k, path in enumerate(paths):
        _edit(path, InstanceNumber=(k * 5) % 8 + 1)
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != paths
    ct = read_ct_series(shuffled, SERIES)
    assert list(ct.instance_uids) == expected_uids
    np.testing.assert_array_equal(ct.array(), volume)


def test_descending_positions_give_the_normal_direction(tmp_path: Path) -> None:
    # An axial series whose slices were written head to foot: the volume is still
    # ordered along +normal (feet to head) with the first voxel at the lowest slice.
    volume = random_hu(depth=4)
    paths = write_series(tmp_path, volume, orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    top = _position(paths[-1])
    ct = read_ct_series(paths[::-1], SERIES)
    np.testing.assert_allclose(ct.direction, (1, 0, 0, 0, 1, 0, 0, 0, 1), atol=1e-9)
    np.testing.assert_allclose(ct.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(ct.image.TransformIndexToPhysicalPoint((0, 0, 3)), top, atol=1e-6)


def test_rescale_slope_and_intercept_give_hu(tmp_path: Path) -> None:
    volume = np.round(random_hu(depth=3) / 2.0) * 2.0  # representable with slope 2
    paths = write_series(tmp_path, volume, rescale_slope=2.0, rescale_intercept=-2048.0)
    np.testing.assert_array_equal(read_ct_series(paths, SERIES).array(), volume)


def test_other_series_in_the_paths_are_skipped(tmp_path: Path) -> None:
    volume = random_hu(depth=3)
    ours = write_series(tmp_path / "a", volume)
    theirs = write_series(tmp_path / "b", random_hu(depth=4, seed=1), series_uid="1.2.3.4")
    ct = read_ct_series([*theirs[:2], *ours, *theirs[2:]], SERIES)
    assert ct.size == (24, 20, 3)
    np.testing.assert_array_equal(ct.array(), volume)


LOSSLESS = [ts for ts in TRANSFER_SYNTAXES if ts not in LOSSY_TRANSFER_SYNTAXES]


@pytest.mark.parametrize("transfer_syntax", LOSSLESS, ids=lambda ts: ts.name)
def test_lossless_syntaxes_read_like_uncompressed(tmp_path: Path, transfer_syntax: str) -> None:
    # 32 x 32 slices: OpenJPEG refuses to encode anything much smaller.
    volume = random_hu(depth=3, rows=32, cols=32, seed=5)
    native = read_ct_series(write_series(tmp_path / "native", volume), SERIES)
    paths = write_series(tmp_path / "coded", volume, transfer_syntax=transfer_syntax)
    assert dcmread(paths[0]).file_meta.TransferSyntaxUID == transfer_syntax
    coded = read_ct_series(paths, SERIES)
    assert (coded.size, coded.spacing, coded.origin, coded.direction) == (
        native.size,
        native.spacing,
        native.origin,
        native.direction,
    )
    np.testing.assert_array_equal(coded.array(), native.array())


@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_compressed_series_mixed_with_shuffling(tmp_path: Path, transfer_syntax: str) -> None:
    volume = random_hu(depth=5, rows=32, cols=40, seed=6)
    paths = write_series(tmp_path, volume, transfer_syntax=transfer_syntax)
    np.testing.assert_array_equal(read_ct_series(paths[::-1], SERIES).array(), volume)


def test_lossy_syntaxes_stay_close(tmp_path: Path) -> None:
    # Smooth content, so lossy codecs keep it close (J2K at 8:1 is the loosest).
    z, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    volume = np.round(40.0 * x + 10.0 * y + 5.0 * z - 500.0)
    for ts in sorted(LOSSY_TRANSFER_SYNTAXES - {JPEGBaseline8Bit}):  # CT needs 12 bits
        paths = write_series(tmp_path / ts, volume, transfer_syntax=ts)
        error = np.abs(read_ct_series(paths, SERIES).array() - volume)
        assert error.mean() <= 10.0 and error.max() <= 100.0, (ts, error.mean(), error.max())


# Refusals -----------------------------------------------------------------------------


def test_missing_slice_names_the_gap(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=6, rows=8, cols=8))
    del paths[3]
    # Along the normal, slice k lies at ORIGIN . NORMAL + 2.5 k mm.
    start = float(np.dot(ORIGIN, NORMAL))
    low, high = start + 2 * 2.5, start + 4 * 2.5
    with pytest.raises(
        VolumeError,
        match=rf"series {SERIES}: 1 slice\(s\) missing between {low:.3f} and {high:.3f} mm "
        r"along the slice normal .*gap 5\.000 mm, slice spacing 2\.500 mm",
    ):
        read_ct_series(paths, SERIES)


def test_two_missing_slices_are_counted(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=6, rows=8, cols=8))
    del paths[2:4]
    with pytest.raises(VolumeError, match=r"2 slice\(s\) missing .*gap 7\.500 mm"):
        read_ct_series(paths, SERIES)


def test_three_slices_with_one_missing(tmp_path: Path) -> None:
    # Gaps 2.5 and 5.0: the median of the gaps would be 3.75 and call both irregular.
    paths = write_series(tmp_path, random_hu(depth=4, rows=8, cols=8))
    with pytest.raises(VolumeError, match=r"1 slice\(s\) missing"):
        read_ct_series([paths[0], paths[1], paths[3]], SERIES)


def test_duplicated_slice_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=4, rows=8, cols=8))
    copy = tmp_path / "copy.dcm"
    ds = dcmread(paths[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"
    ds.save_as(copy)
    at = float(np.dot(ORIGIN, NORMAL)) + 2 * 2.5
    with pytest.raises(
        VolumeError,
        match=rf"series {SERIES}: duplicated slice, instances \S+ and \S+ are both at "
        rf"{at:.3f} mm along the slice normal",
    ) as info:
        read_ct_series([*paths, copy], SERIES)
    assert "1.2.3.999" in str(info.value)


def test_irregular_spacing_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=5, rows=8, cols=8))
    moved = np.asarray(_position(paths[2])) + 0.8 * NORMAL
    _edit(paths[2], ImagePositionPatient=[f"{v:.6f}" for v in moved])
    with pytest.raises(
        VolumeError, match=r"irregular slice spacing between .* gap 3\.300 mm, slice spacing 2\.5"
    ):
        read_ct_series(paths, SERIES)


def test_shifted_slice_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=4, rows=8, cols=8))
    shifted = np.asarray(_position(paths[1])) + np.asarray([3.0, 0.0, 0.0])  # along the rows
    _edit(paths[1], ImagePositionPatient=[f"{v:.6f}" for v in shifted])
    uid = str(dcmread(paths[1]).SOPInstanceUID)
    with pytest.raises(VolumeError, match=rf"instance {uid} is shifted 3\.000 mm in-plane"):
        read_ct_series(paths, SERIES)


def test_no_file_of_the_series(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    with pytest.raises(VolumeError, match=r"series 9\.9\.9: none of the 3 files belongs to it"):
        read_ct_series(paths, "9.9.9")


def test_a_single_slice_is_not_arandom_hu(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    uid = str(dcmread(paths[1]).SOPInstanceUID)
    with pytest.raises(
        VolumeError, match=rf"series {SERIES}: 1 slice \({uid}\), a volume needs at least 2"
    ):
        read_ct_series(paths[1:2], SERIES)


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    _edit(paths[2], ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    uid = str(dcmread(paths[2]).SOPInstanceUID)
    with pytest.raises(
        VolumeError,
        match=rf"instance {uid} has ImageOrientationPatient \(1, 0, 0, 0, 1, 0\), "
        r"but instance \S+ has \(-1, 0, 0, 0, 0\.939693, -0\.34202\)",
    ):
        read_ct_series(paths, SERIES)


def test_mixed_rows_and_columns_are_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "a", random_hu(depth=3, rows=8, cols=8))
    other = write_series(tmp_path / "b", random_hu(depth=4, rows=8, cols=10))
    with pytest.raises(
        VolumeError, match=r"is 8 x 10 \(rows x columns\), but instance \S+ is 8 x 8"
    ):
        read_ct_series([*paths, other[3]], SERIES)


def test_mixed_pixel_spacing_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    _edit(paths[1], PixelSpacing=[0.7, 0.8])
    with pytest.raises(
        VolumeError, match=r"has PixelSpacing \(0\.7, 0\.8\), but instance \S+ has \(0\.7, 0\.7\)"
    ):
        read_ct_series(paths, SERIES)


def test_bad_pixel_spacing_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    _edit(paths[0], PixelSpacing=[0, 0.7])
    with pytest.raises(
        VolumeError, match=r"PixelSpacing expected positive values, got \(0\.0, 0\.7\)"
    ):
        read_ct_series(paths, SERIES)


def test_missing_position_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    _edit(paths[1], ImagePositionPatient=None)
    uid = str(dcmread(paths[1]).SOPInstanceUID)
    with pytest.raises(
        VolumeError,
        match=rf"series {SERIES}, instance {uid}: ImagePositionPatient expected 3 numbers, "
        r"got None",
    ):
        read_ct_series(paths, SERIES)


def test_bad_rows_are_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    _edit(paths[1], Rows=0)
    with pytest.raises(VolumeError, match=r"expected positive Rows and Columns, got 0 x 8"):
        read_ct_series(paths, SERIES)


def test_multi_frame_instances_without_functional_groups_are_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    _edit(paths[0], NumberOfFrames=3)
    with pytest.raises(
        VolumeError,
        match=r"NumberOfFrames 3 without per-frame functional groups .*expected one frame per",
    ):
        read_ct_series(paths, SERIES)


# Multi-frame images (Enhanced CT's functional groups) ------------------------------------


def _enhanced(out: Path, volume: np.ndarray, *, order: list[int] | None = None) -> Path:
    """The series as one Legacy Converted Enhanced CT image (highdicom's converter: geometry
    in per-frame PlanePosition and shared PlaneOrientation/PixelMeasures/PixelValueTransformation
    functional groups), its frames in ``order``."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    datasets = make_ct_series(
        volume, identity=IDENTITY, series_uid=SERIES, spacing_mm=SPACING, origin_mm=ORIGIN,
        orientation=TILTED,
    )  # fmt: skip
    if order is not None:
        datasets = [datasets[i] for i in order]
    image = LegacyConvertedEnhancedCTImage(
        datasets, SERIES, 1, SERIES + ".100", 1, include_dimension_index=False
    )
    out.mkdir(parents=True, exist_ok=True)
    image.save_as(out / "enhanced.dcm", enforce_file_format=True)
    return out / "enhanced.dcm"


def test_an_enhanced_multi_frame_image_reads_like_its_single_frame_series(
    tmp_path: Path,
) -> None:
    volume = random_hu(depth=5)
    single = read_ct_series(write_series(tmp_path / "single", volume), SERIES)
    path = _enhanced(tmp_path / "enhanced", volume, order=[3, 0, 4, 1, 2])
    assert dcmread(path).SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"
    ct = read_ct_series([path], SERIES)
    assert (ct.size, ct.spacing, ct.origin, ct.direction) == (
        single.size, single.spacing, single.origin, single.direction
    )  # fmt: skip
    np.testing.assert_array_equal(ct.array(), volume)  # shared rescale: HU = stored - 1024
    assert ct.instance_uids == (SERIES + ".100",) * 5
    # Sorted by position: frame k of the file holds slice order[k].
    assert ct.frame_numbers == (2, 4, 5, 1, 3)
    assert single.frame_numbers == (1,) * 5


def test_a_frames_own_rescale_wins_over_the_shared_one(tmp_path: Path) -> None:
    volume = random_hu(depth=3, rows=8, cols=8)
    path = _enhanced(tmp_path, volume)
    ds = dcmread(path)
    own = Dataset()
    own.RescaleSlope, own.RescaleIntercept, own.RescaleType = 2, -3072, "HU"
    ds.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence = [own]
    ds.save_as(path)
    expected = volume.copy()
    expected[1] = (volume[1] + 1024) * 2 - 3072  # stored values of frame 2, rescaled its way
    np.testing.assert_array_equal(read_ct_series([path], SERIES).array(), expected)


def test_an_enhanced_image_without_a_frames_position_is_refused(tmp_path: Path) -> None:
    path = _enhanced(tmp_path, random_hu(depth=3, rows=8, cols=8))
    ds = dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(
        VolumeError,
        match=r"instance .*\.100#3: no ImagePositionPatient in the frame's or the shared "
        r"PlanePositionSequence",
    ):
        read_ct_series([path], SERIES)


def test_an_enhanced_image_with_too_few_functional_groups_is_refused(tmp_path: Path) -> None:
    path = _enhanced(tmp_path, random_hu(depth=3, rows=8, cols=8))
    ds = dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[2]
    ds.save_as(path)
    with pytest.raises(VolumeError, match=r"NumberOfFrames 3 but 2 per-frame functional groups"):
        read_ct_series([path], SERIES)


@pytest.mark.parametrize(
    ("value", "expected"),
    # NaN and inf were read (float() takes them): the slices air, or 3.4e38 HU.
    [(None, "numbers"), (float("nan"), "finite numbers"), (float("inf"), "finite numbers")],
)
def test_an_enhanced_image_with_a_bad_rescale_is_refused(
    tmp_path: Path, value: float | None, expected: str
) -> None:
    path = _enhanced(tmp_path, random_hu(depth=3, rows=8, cols=8))
    ds = dcmread(path)
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleSlope = value
    ds.save_as(path)
    with pytest.raises(
        VolumeError, match=rf"instance .*\.100#1: Rescale Slope and Intercept expected {expected}"
    ):
        read_ct_series([path], SERIES)


def test_one_frame_alone_is_not_arandom_hu(tmp_path: Path) -> None:
    path = _enhanced(tmp_path, random_hu(depth=1, rows=8, cols=8))
    with pytest.raises(VolumeError, match=r"1 slice \(.*\.100#1\), a volume needs at least 2"):
        read_ct_series([path], SERIES)


def test_two_frames_at_one_position_are_a_duplicated_slice(tmp_path: Path) -> None:
    path = _enhanced(tmp_path, random_hu(depth=3, rows=8, cols=8))
    ds = dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[2].PlanePositionSequence[0].ImagePositionPatient = list(
        frames[1].PlanePositionSequence[0].ImagePositionPatient
    )
    ds.save_as(path)
    with pytest.raises(VolumeError, match=r"duplicated slice, instances .*#2 and .*#3"):
        read_ct_series([path], SERIES)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    with pytest.raises(VolumeError, match=rf"file {junk}: not a readable DICOM file"):
        read_ct_series([*paths, junk], SERIES)


def test_undecodable_pixel_data_is_named(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    ds = dcmread(paths[1])
    ds.PixelData = ds.PixelData[:20]
    ds.save_as(paths[1])
    with pytest.raises(
        VolumeError, match=rf"instance {ds.SOPInstanceUID}: pixel data cannot be decoded"
    ):
        read_ct_series(paths, SERIES)


def test_an_empty_rescale_slope_is_a_volume_error(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    _edit(paths[1], RescaleSlope="")
    with pytest.raises(VolumeError, match=r"pixel data cannot be decoded \(TypeError"):
        read_ct_series(paths, SERIES)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("slope", ["NaN", "inf"])
def test_a_rescale_that_is_not_a_finite_number_is_a_volume_error(
    tmp_path: Path, slope: str
) -> None:
    # Was read: a NaN slope made the slice air, an inf one 3.4e38 HU, and the engine ran.
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    _edit(paths[1], RescaleSlope=slope)
    uid = dcmread(paths[1]).SOPInstanceUID
    with pytest.raises(
        VolumeError, match=rf"instance {uid}: the Modality LUT .* not finite numbers"
    ):
        read_ct_series(paths, SERIES)


def test_a_slice_whose_codestream_is_larger_than_its_header_is_a_volume_error(
    tmp_path: Path,
) -> None:
    # Decoded to the codestream's size (memory), not the header's.
    paths = write_series(
        tmp_path, random_hu(depth=3, rows=32, cols=32, seed=9), transfer_syntax=JPEG2000Lossless
    )
    for path in paths:  # every slice alike: the geometry checks pass
        _edit(path, Rows=16, Columns=16)
    with pytest.raises(VolumeError, match=r"declares 32 x 32 pixels, the header 16 x 16"):
        read_ct_series(paths, SERIES)


def test_a_jpeg_slice_cut_short_is_a_volume_error(tmp_path: Path) -> None:
    # Was decoded without a word, the rows it lacked filled, and fed to the engine.
    paths = write_series(
        tmp_path, random_hu(depth=3, rows=32, cols=32, seed=8), transfer_syntax=JPEGLosslessSV1
    )
    ds = dcmread(paths[1])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds.save_as(paths[1])
    with pytest.raises(
        VolumeError,
        match=rf"series {SERIES}: SOP instance {ds.SOPInstanceUID}: .*without its end marker",
    ):
        read_ct_series(paths, SERIES)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_a_header_value_of_the_wrong_kind_is_a_volume_error(tmp_path: Path) -> None:
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    _edit(paths[0], NumberOfFrames="77")
    raw = paths[0].read_bytes()
    tag = b"\x28\x00\x08\x00IS\x02\x00"  # (0028,0008) IS, explicit VR little endian
    assert raw.count(tag + b"77") == 1
    paths[0].write_bytes(raw.replace(tag + b"77", tag + b"x?"))  # pydicom refuses to set it
    with pytest.raises(
        VolumeError, match=rf"series {SERIES}: a header value is not usable \(ValueError"
    ):
        read_ct_series(paths, SERIES)


def test_gaps_that_creep_are_refused(tmp_path: Path) -> None:
    # 20 gaps of 2.5 mm, then 19 of 2.6 mm: each within 5 % of the step, yet the last
    # slices end up ~0.9 mm (over a third of a slice) from the regular grid's places.
    paths = write_series(tmp_path, random_hu(depth=40, rows=4, cols=4))
    start = np.asarray(_position(paths[0]))
    offset = 0.0
    for k, path in enumerate(paths[1:], start=1):
        offset += 2.5 if k <= 20 else 2.6
        _edit(path, ImagePositionPatient=[f"{v:.6f}" for v in start + offset * NORMAL])
    with pytest.raises(
        VolumeError,
        match=r"irregular slice spacing: instance \S+ at \S+ mm along the slice normal is "
        r"0\.9\d\d mm from its place on a regular grid of 2\.549 mm slices",
    ):
        read_ct_series(paths, SERIES)


def test_a_series_over_the_voxel_limit_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines import volumes

    paths = write_series(tmp_path, random_hu(depth=4, rows=8, cols=8))
    monkeypatch.setattr(volumes, "MAX_VOXELS", 255)
    monkeypatch.setattr(volumes, "_slice_hu", None)  # never reached: no pixel is decoded
    with pytest.raises(
        VolumeError, match=rf"series {SERIES}: 4 slices of 8 x 8 are 256 voxels, over the 255"
    ):
        read_ct_series(paths, SERIES)


def _padded(path: Path, value: int) -> None:
    """Mark the first 3 x 3 pixels of every frame as padding (stored ``value``)."""
    ds = dcmread(path)
    stored = ds.pixel_array.copy()
    stored[..., :3, :3] = value
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.add_new("PixelPaddingValue", "US", value)
    ds.save_as(path)


def test_pixel_padding_reads_as_air(tmp_path: Path) -> None:
    # Outside the reconstruction circle: read as a value (4000 stored: 2976 HU here, -33792
    # for the common signed -32768) it dragged the tissue beside it out of the window.
    volume = random_hu(depth=3, rows=8, cols=8)
    paths = write_series(tmp_path / "single", volume)
    for path in paths:
        _padded(path, 4000)
    enhanced = _enhanced(tmp_path / "enhanced", volume)
    _padded(enhanced, 4000)
    expected = volume.copy()
    expected[:, :3, :3] = AIR_HU
    np.testing.assert_array_equal(read_ct_series(paths, SERIES).array(), expected)
    np.testing.assert_array_equal(read_ct_series([enhanced], SERIES).array(), expected)


def test_slices_too_far_apart_are_not_a_volume(tmp_path: Path) -> None:
    # A femoral-version protocol's neck and knee, 400 mm apart: the engine's 1 mm grid
    # between them was interpolation alone.
    paths = write_series(tmp_path, random_hu(depth=2, rows=8, cols=8), spacing_mm=(400, 1, 1))
    with pytest.raises(
        VolumeError,
        match=rf"^series {SERIES}: slices 400\.000 mm apart, more than the 10 mm a volume may",
    ):
        read_ct_series(paths, SERIES)
    ten = write_series(tmp_path / "ten", random_hu(depth=2, rows=8, cols=8), spacing_mm=(10, 1, 1))
    assert read_ct_series(ten, SERIES).spacing[2] == pytest.approx(10.0)


@pytest.mark.parametrize(
    "orientation",
    [[0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0.2], [1, 0, 0, 0.3, 0.953939, 0]],
)
def test_orientation_cosines_that_are_not_orthonormal_are_named(
    tmp_path: Path, orientation: list[float]
) -> None:
    # Each was refused as a duplicated slice or a gantry tilt, which sent the admin
    # looking for a resend or a tilt that were not there.
    paths = write_series(tmp_path, random_hu(depth=3, rows=8, cols=8))
    for path in paths:
        _edit(path, ImageOrientationPatient=orientation)
    with pytest.raises(
        VolumeError, match=r"ImageOrientationPatient \(.*\) is not two orthogonal unit vectors"
    ):
        read_ct_series(paths, SERIES)


def test_a_multi_frame_image_without_its_rescale_group_uses_the_top_levels_or_is_refused(
    tmp_path: Path,
) -> None:
    # Read as slope 1, intercept 0: every value 1024 HU off.
    volume = random_hu(depth=3, rows=8, cols=8)
    path = _enhanced(tmp_path, volume)
    ds = dcmread(path)
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    for group in ds.PerFrameFunctionalGroupsSequence:
        if "PixelValueTransformationSequence" in group:
            del group.PixelValueTransformationSequence
    ds.save_as(path)
    with pytest.raises(
        VolumeError, match=r"#1: no Rescale Slope or Intercept in the frame's or the shared"
    ):
        read_ct_series([path], SERIES)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.save_as(path)
    np.testing.assert_array_equal(read_ct_series([path], SERIES).array(), volume)
