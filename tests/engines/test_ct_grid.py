"""From a CT volume to an engine's grid: resampling, windowing, a bilateral field's halves."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the name SimpleITK's documentation uses)
from ct_files import NORMAL, ORIGIN, SERIES, TILTED, random_hu, write_series

from engines.ct_grid import (
    AIR_HU,
    BONE_WINDOW,
    engine_volume,
    field_width_mm,
    hemi_volume,
    hu_window,
    midline_x_mm,
    resample_isotropic,
    to_grid,
    volume_image,
)
from engines.volumes import VolumeError, read_ct_series

# Resampling and windowing -------------------------------------------------------------


def _constant(value: float, size: tuple[int, int, int], spacing: tuple[float, ...]) -> Any:
    image = sitk.GetImageFromArray(np.full(size[::-1], value, np.float32))
    image.SetSpacing(spacing)
    return image


def test_resample_isotropic_spacing_size_and_values(tmp_path: Path) -> None:
    volume = random_hu(depth=6)
    ct = read_ct_series(write_series(tmp_path, volume), SERIES)
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
    ct = read_ct_series(write_series(tmp_path / "block", hu, spacing_mm=(1.0, 1.0, 1.0)), SERIES)
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


def test_volume_image_refuses_a_non_3d_array_or_bad_spacing() -> None:
    with pytest.raises(VolumeError, match=r"^array: expected \[z, y, x\], got shape \[4, 4\]$"):
        volume_image(np.zeros((4, 4)), (1.0, 1.0, 1.0))
    for bad in ((1.0, 1.0), (0.0, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, 1.0, math.inf)):
        with pytest.raises(
            VolumeError,
            match=rf"^spacing: expected three positive mm values, got {re.escape(repr(bad))}$",
        ):
            volume_image(np.zeros((2, 4, 4)), bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("std", [0.0, -0.25, math.nan])
def test_engine_volume_refuses_a_non_positive_std(std: float) -> None:
    image = _constant(0.0, (4, 4, 4), (1.0, 1.0, 1.0))
    with pytest.raises(VolumeError, match=rf"^std: expected a positive number, got {std!r}$"):
        engine_volume(image, (4, 4, 4), std=std)


# Halves of a bilateral field ------------------------------------------------------------


def test_hemi_volume_splits_the_field_at_its_centre_in_patient_x(tmp_path: Path) -> None:
    volume = np.zeros((4, 10, 20))
    volume[:, :, :10] = 100.0  # the patient's right half (x grows toward the left)
    paths = write_series(tmp_path, volume, orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
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
