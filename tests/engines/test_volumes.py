from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the name SimpleITK's documentation uses)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)

from dicom_node.synthetic import (
    LOSSY_TRANSFER_SYNTAXES,
    TRANSFER_SYNTAXES,
    StudyIdentity,
    make_ct_series,
    write,
)
from engines.volumes import (
    AIR_HU,
    BONE_WINDOW,
    CtVolume,
    VolumeError,
    field_width_mm,
    hemi_volume,
    hu_window,
    midline_x_mm,
    read_ct_series,
    resample_isotropic,
    to_grid,
    volume_image,
)

SERIES = "1.2.826.0.1.3680043.8.498.77"
IDENTITY = StudyIdentity.synthetic(11)
# Rows along patient right (-x, an LPS flip), columns tilted 20 degrees out of the axial plane.
_C, _S = math.cos(math.radians(20.0)), math.sin(math.radians(20.0))
TILTED = (-1.0, 0.0, 0.0, 0.0, _C, -_S)
NORMAL = np.cross(TILTED[:3], TILTED[3:])  # (0, -sin, -cos)
SPACING = (2.5, 0.7, 0.7)  # slice, row, column (mm)
ORIGIN = (10.0, -20.0, 30.0)


def _volume(depth: int = 6, rows: int = 20, cols: int = 24, seed: int = 0) -> np.ndarray:
    """Integer HU in -1000..2000, distinct per slice (so order mistakes show)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 2000, size=(depth, rows, cols)).astype(np.float64)


def _write(
    out: Path, volume: np.ndarray, *, prefix: str = "ct", series_uid: str = SERIES, **kwargs: Any
) -> list[Path]:
    options: dict[str, Any] = {
        "spacing_mm": SPACING,
        "origin_mm": ORIGIN,
        "orientation": TILTED,
        **kwargs,
    }
    datasets = make_ct_series(volume, identity=IDENTITY, series_uid=series_uid, **options)
    out.mkdir(parents=True, exist_ok=True)
    return [write(ds, out / f"{prefix}{k:03d}.dcm") for k, ds in enumerate(datasets)]


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
    volume = _volume()
    paths = _write(tmp_path, volume)
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
    volume = _volume(depth=8)
    paths = _write(tmp_path, volume)
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
    volume = _volume(depth=4)
    paths = _write(tmp_path, volume, orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    top = _position(paths[-1])
    ct = read_ct_series(paths[::-1], SERIES)
    np.testing.assert_allclose(ct.direction, (1, 0, 0, 0, 1, 0, 0, 0, 1), atol=1e-9)
    np.testing.assert_allclose(ct.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(ct.image.TransformIndexToPhysicalPoint((0, 0, 3)), top, atol=1e-6)


def test_rescale_slope_and_intercept_give_hu(tmp_path: Path) -> None:
    volume = np.round(_volume(depth=3) / 2.0) * 2.0  # representable with slope 2
    paths = _write(tmp_path, volume, rescale_slope=2.0, rescale_intercept=-2048.0)
    np.testing.assert_array_equal(read_ct_series(paths, SERIES).array(), volume)


def test_other_series_in_the_paths_are_skipped(tmp_path: Path) -> None:
    volume = _volume(depth=3)
    ours = _write(tmp_path / "a", volume)
    theirs = _write(tmp_path / "b", _volume(depth=4, seed=1), series_uid="1.2.3.4")
    ct = read_ct_series([*theirs[:2], *ours, *theirs[2:]], SERIES)
    assert ct.size == (24, 20, 3)
    np.testing.assert_array_equal(ct.array(), volume)


LOSSLESS = [ts for ts in TRANSFER_SYNTAXES if ts not in LOSSY_TRANSFER_SYNTAXES]


@pytest.mark.parametrize("transfer_syntax", LOSSLESS, ids=lambda ts: ts.name)
def test_lossless_syntaxes_read_like_uncompressed(tmp_path: Path, transfer_syntax: str) -> None:
    # 32 x 32 slices: OpenJPEG refuses to encode anything much smaller.
    volume = _volume(depth=3, rows=32, cols=32, seed=5)
    native = read_ct_series(_write(tmp_path / "native", volume), SERIES)
    paths = _write(tmp_path / "coded", volume, transfer_syntax=transfer_syntax)
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
    volume = _volume(depth=5, rows=32, cols=40, seed=6)
    paths = _write(tmp_path, volume, transfer_syntax=transfer_syntax)
    np.testing.assert_array_equal(read_ct_series(paths[::-1], SERIES).array(), volume)


def test_lossy_syntaxes_stay_close(tmp_path: Path) -> None:
    # Smooth content, so lossy codecs keep it close (J2K at 8:1 is the loosest).
    z, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    volume = np.round(40.0 * x + 10.0 * y + 5.0 * z - 500.0)
    for ts in sorted(LOSSY_TRANSFER_SYNTAXES - {JPEGBaseline8Bit}):  # CT needs 12 bits
        paths = _write(tmp_path / ts, volume, transfer_syntax=ts)
        error = np.abs(read_ct_series(paths, SERIES).array() - volume)
        assert error.mean() <= 10.0 and error.max() <= 100.0, (ts, error.mean(), error.max())


# Refusals -----------------------------------------------------------------------------


def test_missing_slice_names_the_gap(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=6, rows=8, cols=8))
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
    paths = _write(tmp_path, _volume(depth=6, rows=8, cols=8))
    del paths[2:4]
    with pytest.raises(VolumeError, match=r"2 slice\(s\) missing .*gap 7\.500 mm"):
        read_ct_series(paths, SERIES)


def test_three_slices_with_one_missing(tmp_path: Path) -> None:
    # Gaps 2.5 and 5.0: the median of the gaps would be 3.75 and call both irregular.
    paths = _write(tmp_path, _volume(depth=4, rows=8, cols=8))
    with pytest.raises(VolumeError, match=r"1 slice\(s\) missing"):
        read_ct_series([paths[0], paths[1], paths[3]], SERIES)


def test_duplicated_slice_is_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=4, rows=8, cols=8))
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
    paths = _write(tmp_path, _volume(depth=5, rows=8, cols=8))
    moved = np.asarray(_position(paths[2])) + 0.8 * NORMAL
    _edit(paths[2], ImagePositionPatient=[f"{v:.6f}" for v in moved])
    with pytest.raises(
        VolumeError, match=r"irregular slice spacing between .* gap 3\.300 mm, slice spacing 2\.5"
    ):
        read_ct_series(paths, SERIES)


def test_shifted_slice_is_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=4, rows=8, cols=8))
    shifted = np.asarray(_position(paths[1])) + np.asarray([3.0, 0.0, 0.0])  # along the rows
    _edit(paths[1], ImagePositionPatient=[f"{v:.6f}" for v in shifted])
    uid = str(dcmread(paths[1]).SOPInstanceUID)
    with pytest.raises(VolumeError, match=rf"instance {uid} is shifted 3\.000 mm in-plane"):
        read_ct_series(paths, SERIES)


def test_no_file_of_the_series(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
    with pytest.raises(VolumeError, match=r"series 9\.9\.9: none of the 3 files belongs to it"):
        read_ct_series(paths, "9.9.9")


def test_a_single_slice_is_not_a_volume(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
    uid = str(dcmread(paths[1]).SOPInstanceUID)
    with pytest.raises(
        VolumeError, match=rf"series {SERIES}: 1 slice \({uid}\), a volume needs at least 2"
    ):
        read_ct_series(paths[1:2], SERIES)


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
    _edit(paths[2], ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    uid = str(dcmread(paths[2]).SOPInstanceUID)
    with pytest.raises(
        VolumeError,
        match=rf"instance {uid} has ImageOrientationPatient \(1, 0, 0, 0, 1, 0\), "
        r"but instance \S+ has \(-1, 0, 0, 0, 0\.939693, -0\.34202\)",
    ):
        read_ct_series(paths, SERIES)


def test_mixed_rows_and_columns_are_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path / "a", _volume(depth=3, rows=8, cols=8))
    other = _write(tmp_path / "b", _volume(depth=4, rows=8, cols=10))
    with pytest.raises(
        VolumeError, match=r"is 8 x 10 \(rows x columns\), but instance \S+ is 8 x 8"
    ):
        read_ct_series([*paths, other[3]], SERIES)


def test_mixed_pixel_spacing_is_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
    _edit(paths[1], PixelSpacing=[0.7, 0.8])
    with pytest.raises(
        VolumeError, match=r"has PixelSpacing \(0\.7, 0\.8\), but instance \S+ has \(0\.7, 0\.7\)"
    ):
        read_ct_series(paths, SERIES)


def test_bad_pixel_spacing_is_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
    _edit(paths[0], PixelSpacing=[0, 0.7])
    with pytest.raises(
        VolumeError, match=r"PixelSpacing expected positive values, got \(0\.0, 0\.7\)"
    ):
        read_ct_series(paths, SERIES)


def test_missing_position_is_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
    _edit(paths[1], ImagePositionPatient=None)
    uid = str(dcmread(paths[1]).SOPInstanceUID)
    with pytest.raises(
        VolumeError,
        match=rf"series {SERIES}, instance {uid}: ImagePositionPatient expected 3 numbers, "
        r"got None",
    ):
        read_ct_series(paths, SERIES)


def test_bad_rows_are_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
    _edit(paths[1], Rows=0)
    with pytest.raises(VolumeError, match=r"expected positive Rows and Columns, got 0 x 8"):
        read_ct_series(paths, SERIES)


def test_multi_frame_instances_without_functional_groups_are_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
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
    volume = _volume(depth=5)
    single = read_ct_series(_write(tmp_path / "single", volume), SERIES)
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
    volume = _volume(depth=3, rows=8, cols=8)
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
    path = _enhanced(tmp_path, _volume(depth=3, rows=8, cols=8))
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
    path = _enhanced(tmp_path, _volume(depth=3, rows=8, cols=8))
    ds = dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[2]
    ds.save_as(path)
    with pytest.raises(VolumeError, match=r"NumberOfFrames 3 but 2 per-frame functional groups"):
        read_ct_series([path], SERIES)


def test_an_enhanced_image_with_a_bad_rescale_is_refused(tmp_path: Path) -> None:
    path = _enhanced(tmp_path, _volume(depth=3, rows=8, cols=8))
    ds = dcmread(path)
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleSlope = None
    ds.save_as(path)
    with pytest.raises(
        VolumeError, match=r"instance .*\.100#1: Rescale Slope and Intercept expected numbers"
    ):
        read_ct_series([path], SERIES)


def test_one_frame_alone_is_not_a_volume(tmp_path: Path) -> None:
    path = _enhanced(tmp_path, _volume(depth=1, rows=8, cols=8))
    with pytest.raises(VolumeError, match=r"1 slice \(.*\.100#1\), a volume needs at least 2"):
        read_ct_series([path], SERIES)


def test_two_frames_at_one_position_are_a_duplicated_slice(tmp_path: Path) -> None:
    path = _enhanced(tmp_path, _volume(depth=3, rows=8, cols=8))
    ds = dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[2].PlanePositionSequence[0].ImagePositionPatient = list(
        frames[1].PlanePositionSequence[0].ImagePositionPatient
    )
    ds.save_as(path)
    with pytest.raises(VolumeError, match=r"duplicated slice, instances .*#2 and .*#3"):
        read_ct_series([path], SERIES)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    with pytest.raises(VolumeError, match=rf"file {junk}: not a readable DICOM file"):
        read_ct_series([*paths, junk], SERIES)


def test_undecodable_pixel_data_is_named(tmp_path: Path) -> None:
    paths = _write(tmp_path, _volume(depth=3, rows=8, cols=8))
    ds = dcmread(paths[1])
    ds.PixelData = ds.PixelData[:20]
    ds.save_as(paths[1])
    with pytest.raises(
        VolumeError, match=rf"instance {ds.SOPInstanceUID}: pixel data cannot be decoded"
    ):
        read_ct_series(paths, SERIES)


# Resampling and windowing -------------------------------------------------------------


def _constant(value: float, size: tuple[int, int, int], spacing: tuple[float, ...]) -> Any:
    image = sitk.GetImageFromArray(np.full(size[::-1], value, np.float32))
    image.SetSpacing(spacing)
    return image


def test_resample_isotropic_spacing_size_and_values(tmp_path: Path) -> None:
    volume = _volume(depth=6)
    ct = read_ct_series(_write(tmp_path, volume), SERIES)
    iso = resample_isotropic(ct, 1.0)
    assert iso.GetSpacing() == (1.0, 1.0, 1.0)
    # round(24 * 0.7), round(20 * 0.7), round(6 * 2.5)
    assert iso.GetSize() == (17, 14, 15)
    assert iso.GetDirection() == pytest.approx(ct.direction)
    assert iso.GetPixelID() == sitk.sitkFloat32

    # Centred on the same box: the centres of both grids coincide.
    def centre(image: Any) -> np.ndarray:
        return np.asarray(
            image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
        )

    np.testing.assert_allclose(centre(iso), centre(ct.image), atol=1e-6)
    # A constant volume stays constant everywhere: no -1024 at the borders.
    flat = resample_isotropic(_constant(100.0, (24, 20, 6), (0.7, 0.7, 2.5)), 1.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(flat), 100.0, atol=1e-3)


def test_resample_isotropic_refuses_bad_spacing() -> None:
    image = _constant(0.0, (4, 4, 4), (1.0, 1.0, 1.0))
    for bad in (0.0, -1.0, math.nan, True):
        with pytest.raises(VolumeError, match=r"spacing_mm: expected a positive number of mm"):
            resample_isotropic(image, bad)
    with pytest.raises(VolumeError, match=r"volume: expected a CtVolume or a 3-D SimpleITK image"):
        resample_isotropic(np.zeros((4, 4, 4)), 1.0)


def test_resample_antialiases_when_coarsening() -> None:
    # A one-voxel checkerboard averages out rather than aliasing into stripes.
    z, y, x = np.indices((16, 16, 16))
    board = np.where((x + y + z) % 2 == 0, 1000.0, 0.0).astype(np.float32)
    image = sitk.GetImageFromArray(board)
    coarse = sitk.GetArrayFromImage(resample_isotropic(image, 4.0))
    assert coarse.shape == (4, 4, 4)
    assert np.abs(coarse - 500.0).max() < 60.0


def test_to_grid_fits_the_longest_extent_and_pads_with_air() -> None:
    # 16.8 x 14 x 15 mm (x, y, z): into a 16 x 32 x 32 grid, z limits the scale.
    ct = _constant(100.0, (24, 20, 6), (0.7, 0.7, 2.5))
    grid = to_grid(ct, (16, 32, 32))
    assert grid.shape == (16, 32, 32) and grid.dtype == np.float32
    cube = 15.0 / 16
    # Along z the volume fills the grid; x and y keep their aspect and are centred.
    assert np.all(grid[:, 16, 16] == pytest.approx(100.0, abs=1e-3))
    inside_x = np.flatnonzero(grid[8, 16] > 0)
    inside_y = np.flatnonzero(grid[8, :, 16] > 0)
    assert len(inside_x) == pytest.approx(16.8 / cube, abs=1.5)
    assert len(inside_y) == pytest.approx(14.0 / cube, abs=1.5)
    assert inside_x[0] + inside_x[-1] == 31 and inside_y[0] + inside_y[-1] == 31  # centred
    assert grid[8, 0, 0] == AIR_HU and grid[0, 16, 0] == AIR_HU
    assert set(np.unique(grid[:, :, : inside_x[0]])) == {AIR_HU}


def test_to_grid_is_in_patient_axes(tmp_path: Path) -> None:
    # A bright block at the patient's left, anterior, superior corner of a tilted,
    # LPS-flipped series lands at the same corner of the grid: high W, low H, high D.
    depth, rows, cols = 20, 28, 28
    hu = np.full((depth, rows, cols), 0.0)
    # Patient position of voxel [k, j, i]: origin + i * row + j * column + k * normal (1 mm).
    k, j, i = (a[..., None] for a in np.indices(hu.shape))
    points = np.asarray(ORIGIN) + i * TILTED[:3] + j * np.asarray(TILTED[3:]) + k * NORMAL
    centre = points.reshape(-1, 3).mean(axis=0)
    corner = (
        (points[..., 0] > centre[0] + 4)
        & (points[..., 1] < centre[1] - 4)
        & (points[..., 2] > centre[2] + 4)
    )
    hu[corner] = 1000.0
    ct = read_ct_series(_write(tmp_path / "block", hu, spacing_mm=(1.0, 1.0, 1.0)), SERIES)
    grid = to_grid(ct, (16, 16, 16))
    bright = np.argwhere(grid > 500.0)
    assert len(bright) > 0
    d, h, w = bright.mean(axis=0)
    assert d > 8 and h < 8 and w > 8


def test_to_grid_refuses_bad_shapes() -> None:
    image = _constant(0.0, (4, 4, 4), (1.0, 1.0, 1.0))
    for bad in ((16, 16), (0, 16, 16), (16.0, 16, 16), (True, 16, 16)):
        with pytest.raises(VolumeError, match=r"shape: expected three positive integers"):
            to_grid(image, bad)  # type: ignore[arg-type]


def test_hu_window_bone_default_and_clipping() -> None:
    assert BONE_WINDOW == (500.0, 2000.0)
    values = np.array([-1024.0, -500.0, 40.0, 500.0, 1500.0, 3000.0])
    out = hu_window(values)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.27, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(hu_window([0.0, 40.0, 80.0], 40.0, 80.0), [0.0, 0.5, 1.0])
    assert hu_window(np.zeros((2, 3, 4))).shape == (2, 3, 4)
    with pytest.raises(VolumeError, match=r"window: expected a finite center and a positive width"):
        hu_window(values, 400.0, 0.0)
    with pytest.raises(VolumeError, match=r"got nan/1800"):
        hu_window(values, math.nan, 1800.0)


# Halves of a bilateral field ------------------------------------------------------------


def test_hemi_volume_splits_the_field_at_its_centre_in_patient_x(tmp_path: Path) -> None:
    volume = np.zeros((4, 10, 20))
    volume[:, :, :10] = 100.0  # the patient's right half (x grows toward the left)
    paths = _write(tmp_path, volume, orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                   spacing_mm=(2.0, 1.0, 1.0), origin_mm=(-9.5, 0.0, 0.0))  # fmt: skip
    ct = read_ct_series(paths, SERIES)
    assert field_width_mm(ct) == pytest.approx(20.0)
    right, left = hemi_volume(ct, "R"), hemi_volume(ct, "L")
    assert right.GetSize() == left.GetSize() == (10, 10, 8)  # 1 mm voxels, the finest spacing
    assert right.GetOrigin()[0] == pytest.approx(-9.5) and left.GetOrigin()[0] == pytest.approx(0.5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(right), 100.0, atol=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(left), 0.0, atol=1e-3)
    coarse = hemi_volume(ct, "R", spacing_mm=2.0)  # the engine's spacing
    assert coarse.GetSize() == (5, 5, 4) and coarse.GetSpacing() == (2.0, 2.0, 2.0)
    with pytest.raises(VolumeError, match=r"side: expected R or L, got 'B'"):
        hemi_volume(ct, "B")


def _pelvis(midline_mm: float, width_px: int = 150) -> Any:
    """A field of 2 mm voxels, x from -150 mm, with two femur-like bone columns (and a
    narrower sacrum-like one between them) mirror-symmetric about ``midline_mm``."""
    array = np.full((6, 20, width_px), -1000.0, dtype=np.float32)
    x = -150.0 + 1.0 + 2.0 * np.arange(width_px)  # voxel centres
    for centre, radius in ((-90.0, 18.0), (90.0, 18.0), (0.0, 10.0)):
        array[:, 5:15, np.abs(x - (midline_mm + centre)) <= radius] = 1200.0
    return volume_image(array, (2.0, 2.0, 2.0), origin=(-149.0, 0.0, 0.0))


@pytest.mark.parametrize("midline", [0.0, 24.0, -31.0])
def test_midline_x_mm_is_the_axis_of_symmetry_of_the_bone_wherever_the_patient_lies(
    midline: float,
) -> None:
    assert midline_x_mm(_pelvis(midline)) == pytest.approx(midline, abs=1.0)


def test_midline_x_mm_gives_none_without_bone_or_when_the_axis_is_off_the_centre() -> None:
    empty = volume_image(np.full((4, 8, 150), 40.0), (2.0, 2.0, 2.0), origin=(-149.0, 0.0, 0.0))
    assert midline_x_mm(empty) is None  # soft tissue only
    edge = np.full((4, 8, 150), -1000.0, dtype=np.float32)
    edge[:, :, 5:15] = 1200.0  # one block of bone near the field's right edge
    assert midline_x_mm(volume_image(edge, (2.0, 2.0, 2.0), origin=(-149.0, 0.0, 0.0))) is None


def test_hemi_volume_splits_at_the_midline_into_mirror_halves_of_equal_width() -> None:
    pelvis = _pelvis(24.0)  # the field spans -150..150 mm, the patient's midline at +24 mm
    right = hemi_volume(pelvis, "R", 2.0, midline_mm=24.0)
    left = hemi_volume(pelvis, "L", 2.0, midline_mm=24.0)
    assert right.GetSize() == left.GetSize() == (63, 20, 6)  # 126 mm: the narrower side
    assert right.GetOrigin()[0] == pytest.approx(24.0 - 126.0 + 1.0)
    assert left.GetOrigin()[0] == pytest.approx(25.0)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(left)[:, :, ::-1], sitk.GetArrayFromImage(right), atol=1e-3
    )
    # Split at the field's centre instead, the halves of this patient are not mirror images.
    right_c, left_c = (sitk.GetArrayFromImage(hemi_volume(pelvis, s, 2.0)) for s in "RL")
    assert np.abs(left_c[:, :, ::-1] - right_c).max() > 1000.0
    for bad in (-150.0, 151.0, math.nan):
        with pytest.raises(VolumeError, match=r"midline_mm: expected a position inside the field"):
            hemi_volume(pelvis, "R", 2.0, midline_mm=bad)
