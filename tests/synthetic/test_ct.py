from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dicom_node.errors import FactoryError
from dicom_node.synthetic import CT_IMAGE, StudyIdentity, make_ct_series, write


@pytest.fixture
def volume() -> np.ndarray:
    """4 slices of 32x48 voxels in HU: air to dense bone, different per slice."""
    z, y, x = np.mgrid[0:4, 0:32, 0:48]
    return np.asarray(-1000 + 40 * x + 10 * y + 100 * z, dtype=np.int16)


def _floats(values: object) -> list[float]:
    return [float(v) for v in values]  # type: ignore[attr-defined]


def test_each_slice_passes_dciodvfy(
    volume: np.ndarray,
    identity: StudyIdentity,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    for k, ds in enumerate(make_ct_series(volume, identity=identity)):
        assert dciodvfy(write(ds, tmp_path / f"ct{k}.dcm")) == []


def test_hip_ct_with_laterality_passes_dciodvfy(
    volume: np.ndarray,
    identity: StudyIdentity,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    ds = make_ct_series(volume, identity=identity, laterality="R", bits_stored=16)[0]
    assert (ds.BodyPartExamined, ds.Laterality) == ("HIP", "R")
    assert dciodvfy(write(ds, tmp_path / "ct.dcm")) == []


def test_axial_geometry(volume: np.ndarray, identity: StudyIdentity) -> None:
    slices = make_ct_series(
        volume, identity=identity, spacing_mm=(2.5, 0.7, 0.8), origin_mm=(-10.0, 20.0, 30.0)
    )
    assert len(slices) == 4
    for k, ds in enumerate(slices):
        assert ds.SOPClassUID == CT_IMAGE
        assert ds.InstanceNumber == k + 1
        assert _floats(ds.ImagePositionPatient) == [-10.0, 20.0, 30.0 + 2.5 * k]
        assert _floats(ds.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
        # Pixel Spacing is (between rows, between columns) = (y, x).
        assert _floats(ds.PixelSpacing) == [0.7, 0.8]
        assert float(ds.SliceThickness) == 2.5
        assert float(ds.SliceLocation) == 30.0 + 2.5 * k
        assert (ds.Rows, ds.Columns) == (32, 48)
    assert len({ds.FrameOfReferenceUID for ds in slices}) == 1
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    assert len({ds.SOPInstanceUID for ds in slices}) == 4


def test_oblique_slices_step_along_the_normal(
    volume: np.ndarray,
    identity: StudyIdentity,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    # Rows tilted 30 degrees from x towards z; columns along y; normal = row x column.
    orientation = (c, 0.0, s, 0.0, 1.0, 0.0)
    normal = np.cross([c, 0.0, s], [0.0, 1.0, 0.0])
    slices = make_ct_series(
        volume, identity=identity, spacing_mm=(3.0, 1.0, 1.0), orientation=orientation
    )
    for k, ds in enumerate(slices):
        np.testing.assert_allclose(_floats(ds.ImagePositionPatient), 3.0 * k * normal, atol=1e-5)
        np.testing.assert_allclose(_floats(ds.ImageOrientationPatient), orientation, atol=1e-6)
        assert float(ds.SliceLocation) == pytest.approx(3.0 * k, abs=1e-5)
    assert dciodvfy(write(slices[-1], tmp_path / "oblique.dcm")) == []


def test_hounsfield_values_round_trip(volume: np.ndarray, identity: StudyIdentity) -> None:
    slices = make_ct_series(
        volume, identity=identity, rescale_slope=0.5, rescale_intercept=-1024.0, bits_stored=16
    )
    for k, ds in enumerate(slices):
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.5, -1024.0)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, volume[k])


def test_series_uid_makes_the_series_reproducible(
    volume: np.ndarray, identity: StudyIdentity
) -> None:
    series = "1.2.826.0.1.3680043.8.498.2"
    first = make_ct_series(volume, identity=identity, series_uid=series)
    again = make_ct_series(volume, identity=identity, series_uid=series)
    assert [ds.SOPInstanceUID for ds in first] == [ds.SOPInstanceUID for ds in again]
    assert first[0].FrameOfReferenceUID == again[0].FrameOfReferenceUID
    assert first[0].SeriesInstanceUID == series


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing_mm": (1.0, -0.5, 0.5)}, "spacing_mm: expected 3 positive numbers"),
        ({"spacing_mm": (1.0, 0.5)}, "spacing_mm: expected 3 positive numbers"),
        ({"origin_mm": (0.0, float("nan"), 0.0)}, "origin_mm: expected 3 finite numbers"),
        ({"orientation": (1, 0, 0, 0, 1)}, "orientation: expected 6 direction cosines"),
        ({"orientation": (2, 0, 0, 0, 1, 0)}, "orientation: expected two orthogonal unit vectors"),
        ({"orientation": (1, 0, 0, 1, 0, 0)}, "orientation: expected two orthogonal unit vectors"),
        ({"rescale_slope": 0.0}, "rescale_slope: expected a positive number, got 0.0"),
        ({"rescale_intercept": float("inf")}, "rescale_intercept: expected a finite number"),
        ({"bits_stored": 11}, "bits_stored: expected 12-16, got 11"),
        ({"laterality": "LR"}, 'laterality: expected one of .*, got "LR"'),
        ({"transfer_syntax": "1.2.840.10008.1.2.4.100"}, "is not supported"),
        ({"rescale_intercept": 0.0}, r"volume: values -1000.0..1490.0 HU do not fit 12-bit"),
    ],
)
def test_invalid_arguments_are_refused(
    kwargs: dict[str, object], message: str, volume: np.ndarray, identity: StudyIdentity
) -> None:
    with pytest.raises(FactoryError, match=message):
        make_ct_series(volume, identity=identity, **kwargs)  # type: ignore[arg-type]


def test_volume_must_be_3d(identity: StudyIdentity) -> None:
    with pytest.raises(FactoryError, match=r"volume: expected a 3-D array, got shape \(8, 8\)"):
        make_ct_series(np.zeros((8, 8)), identity=identity)


def test_metal_needs_more_bits(identity: StudyIdentity) -> None:
    metal = np.full((1, 4, 4), 8000.0)
    with pytest.raises(FactoryError, match=r"-1024.0..3071.0 HU"):
        make_ct_series(metal, identity=identity)
    (ds,) = make_ct_series(metal, identity=identity, bits_stored=16)
    assert int(ds.pixel_array.max()) == 9024
