"""CtCache: a study's CT series read once into the engine's grid; a bad one is missing."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.ct_input import CtCache
from dicom_node.route.plan import SIDES, ct_series, source_image
from dicom_node.synthetic import StudyIdentity, make_ct_series, write
from engines.ct_grid import engine_volume, hemi_volume
from engines.manifest import Preprocessing
from engines.phantoms.ct import ct_hip, phantom_image, write_ct_study_series
from engines.volumes import VolumeError

PRE = Preprocessing(size=64, volume=(8, 16, 16))


def written(tmp_path: Path) -> tuple[list[Path], str]:
    paths = write_ct_study_series(tmp_path, ct_hip("normal", 5, shape=(10, 32, 32)),
                                  StudyIdentity.synthetic(5))  # fmt: skip
    return paths, str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def images(paths: list[Path]) -> list:  # type: ignore[type-arg]
    return [source_image(pydicom.dcmread(p, stop_before_pixels=True), p, "PACS") for p in paths]


def test_the_series_becomes_the_engines_input_once(tmp_path: Path) -> None:
    paths, series = written(tmp_path)
    cache = CtCache(images(paths))
    volume = cache.get(series, PRE, "R")  # the phantom series: Laterality R
    assert volume is not None and volume.shape == (8, 16, 16)
    assert cache.get(series, PRE, "R") is volume  # computed once per grid and hip
    expected = engine_volume(phantom_image(ct_hip("normal", 5, shape=(10, 32, 32))), (8, 16, 16))
    assert np.abs(volume - expected).max() < 2e-3
    assert cache.get(None, PRE, "R") is None
    assert cache.get(series, PRE, "L") is None  # a CT of the right hip shows no left hip
    with pytest.raises(VolumeError, match=r"side: expected R or L, got 'B'"):
        cache.get(series, PRE, "B")


def test_a_series_with_a_missing_slice_is_logged_and_treated_as_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths, series = written(tmp_path)
    del paths[4]
    with caplog.at_level(logging.WARNING, logger="dicom_node.ct_input"):
        assert CtCache(images(paths)).get(series, PRE, "R") is None
    assert f"CT series {series} not used" in caplog.text and "missing" in caplog.text


def test_a_localizer_kept_in_the_series_is_left_out_of_the_volume(tmp_path: Path) -> None:
    paths, series = written(tmp_path)
    topogram = pydicom.dcmread(paths[0])
    topogram.SOPInstanceUID = "1.2.3.799"
    topogram.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    topogram.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal: not the slices' plane
    topogram.save_as(tmp_path / "topogram.dcm")
    cache = CtCache(images([*paths, tmp_path / "topogram.dcm"]))
    volume = cache.volume(series)
    assert volume is not None and "1.2.3.799" not in volume.instance_uids
    assert cache.get(series, PRE, "R") is not None


def test_an_engine_without_a_ct_grid_is_refused(tmp_path: Path) -> None:
    paths, series = written(tmp_path)
    with pytest.raises(VolumeError, match="gives no CT grid"):
        CtCache(images(paths)).get(series, replace(PRE, volume=None), "R")


def test_an_enhanced_multi_frame_ct_is_the_same_input_as_its_series(tmp_path: Path) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    paths, series = written(tmp_path / "single")
    single = CtCache(images(paths)).get(series, PRE, "R")
    enhanced = LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in paths], series, 1, pydicom.uid.generate_uid(), 1
    )
    # The conversion puts the series' R in Frame Laterality (shared functional groups) and
    # none at the top: read as no side, the CT was split and half given to the left hip.
    assert "Laterality" not in enhanced and "ImageLaterality" not in enhanced
    shared = enhanced.SharedFunctionalGroupsSequence[0]
    assert shared.FrameAnatomySequence[0].FrameLaterality == "R"
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    [image] = images([path])
    assert (image.frames, image.attributes["Modality"], image.laterality) == (10, "CT", "R")
    assert (CtCache([image]).part(series, "R"), CtCache([image]).part(series, "L")) == (
        "whole",
        None,
    )
    # One instance, ten slices: a CT series for `requires: [ct]` and the engine's input.
    assert ct_series([image]) == series
    assert ct_series(images(paths[:1])) is None  # one single-frame slice is not
    volume = CtCache([image]).get(series, PRE, "R")
    assert single is not None and volume is not None
    np.testing.assert_array_equal(volume, single)


def bilateral(tmp_path: Path, width: int = 128, air: int = 0) -> tuple[list[Path], str]:
    """A pelvis CT without Laterality (the factory's "B"): the right-hip phantom and its mirror
    image side by side (x: right->left), 2 mm voxels, so its field is ``2 * width`` mm wide;
    ``air`` more columns of air on the patient's left put the patient off the field's centre."""
    right = ct_hip("osteoarthritis", 7, shape=(10, 32, width // 2)).array
    air_columns = np.full((10, 32, air), -1024.0, dtype=np.float32)
    both = np.concatenate([right, right[:, :, ::-1], air_columns], axis=2)
    series = "1.2.826.0.1.3680043.8.498.66"
    origin = (-(width - 1.0), -31.0, -9.0)  # centred on the patient: the midline at x = 0
    datasets = make_ct_series(both, identity=StudyIdentity.synthetic(6), series_uid=series,
                              spacing_mm=(2.0, 2.0, 2.0), origin_mm=origin,
                              laterality="B")  # fmt: skip
    (tmp_path / "ct").mkdir(parents=True)
    return [write(ds, tmp_path / "ct" / f"{k}.dcm") for k, ds in enumerate(datasets)], series


def test_a_bilateral_ct_gives_each_hip_its_half_in_the_right_hips_pose(tmp_path: Path) -> None:
    paths, series = bilateral(tmp_path)  # 256 mm wide: both hips
    assert "Laterality" not in pydicom.dcmread(paths[0], stop_before_pixels=True)
    cache = CtCache(images(paths))
    assert (cache.part(series, "R"), cache.part(series, "L")) == ("half", "half")
    right, left = cache.get(series, PRE, "R"), cache.get(series, PRE, "L")
    assert right is not None and left is not None and right.shape == (8, 16, 16)
    # The left hip is the right one mirrored: mirrored back, its input is the right hip's.
    np.testing.assert_allclose(left, right, atol=1e-4)
    whole = engine_volume(cache.volume(series), (8, 16, 16))  # type: ignore[arg-type]
    assert np.abs(whole - right).max() > 0.1  # a half, not the field squeezed into the grid


def test_a_bilateral_ct_is_split_at_the_patients_midline_not_the_fields_centre(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths, series = bilateral(tmp_path / "centred")
    centred = CtCache(images(paths))
    paths, series = bilateral(tmp_path / "off", air=40)  # 80 mm of air on the left: 336 mm
    cache = CtCache(images(paths))
    with caplog.at_level(logging.INFO, logger="dicom_node.ct_input"):
        assert cache.midline(series) == pytest.approx(0.0, abs=1.0)  # the field's centre: 40
    assert f"CT series {series}: both hips in one field, split at the midline x = " in caplog.text
    for side in SIDES:
        expected, got = centred.get(series, PRE, side), cache.get(series, PRE, side)
        assert expected is not None and got is not None
        np.testing.assert_allclose(got, expected, atol=1e-4)  # as if the patient were centred
    volume = cache.volume(series)
    assert volume is not None
    # What splitting at the field's centre gave: the right half took part of the left hip.
    at_centre = engine_volume(hemi_volume(volume, "R", PRE.volume_spacing_mm), (8, 16, 16))
    assert np.abs(at_centre - centred.get(series, PRE, "R")).max() > 0.1  # type: ignore[operator]


def _shifted(paths: list[Path], x_mm: float) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [x_mm, *ds.ImagePositionPatient[1:]]
        ds.save_as(path)


def test_a_narrow_ct_without_laterality_shows_the_hip_its_position_says(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    paths, series = bilateral(tmp_path, width=64)  # 128 mm, centred on x = 0: side unknown
    cache = CtCache(images(paths))
    assert (cache.part(series, "R"), cache.part(series, "L")) == (None, None)
    assert cache.get(series, PRE, "R") is None and cache.get(series, PRE, "L") is None
    assert "not used for either hip" in caplog.text
    _shifted(paths, -150.0)  # centred at x = -87 mm: the patient's right
    cache = CtCache(images(paths))
    assert (cache.part(series, "R"), cache.part(series, "L")) == ("whole", None)
    assert cache.get(series, PRE, "R") is not None and cache.get(series, PRE, "L") is None
    _shifted(paths, 24.0)  # centred at x = +87 mm: the left hip, mirrored
    cache = CtCache(images(paths))
    assert (cache.part(series, "R"), cache.part(series, "L")) == (None, "whole")
    for path in paths:  # Image Laterality B says both hips whatever the field
        ds = pydicom.dcmread(path)
        ds.ImageLaterality = "B"
        ds.save_as(path)
    assert CtCache(images(paths)).part(series, "L") == "half"
