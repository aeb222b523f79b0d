"""CtCache: a study's CT series read once into the engine's grid; a bad one is missing."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.ct_input import CtCache
from dicom_node.route.plan import ct_series, source_image
from dicom_node.synthetic import StudyIdentity
from engines.manifest import Preprocessing
from engines.phantoms.ct import ct_hip, phantom_image, write_ct_study_series
from engines.volumes import VolumeError, engine_volume

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
    volume = cache.get(series, PRE)
    assert volume is not None and volume.shape == (8, 16, 16)
    assert cache.get(series, PRE) is volume  # computed once per grid
    expected = engine_volume(phantom_image(ct_hip("normal", 5, shape=(10, 32, 32))), (8, 16, 16))
    assert np.abs(volume - expected).max() < 2e-3
    assert cache.get(None, PRE) is None


def test_a_series_with_a_missing_slice_is_logged_and_treated_as_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths, series = written(tmp_path)
    del paths[4]
    with caplog.at_level(logging.WARNING, logger="dicom_node.ct_input"):
        assert CtCache(images(paths)).get(series, PRE) is None
    assert f"CT series {series} not used" in caplog.text and "missing" in caplog.text


def test_an_engine_without_a_ct_grid_is_refused(tmp_path: Path) -> None:
    paths, series = written(tmp_path)
    with pytest.raises(VolumeError, match="gives no CT grid"):
        CtCache(images(paths)).get(series, replace(PRE, volume=None))


def test_an_enhanced_multi_frame_ct_is_the_same_input_as_its_series(tmp_path: Path) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    paths, series = written(tmp_path / "single")
    single = CtCache(images(paths)).get(series, PRE)
    enhanced = LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in paths], series, 1, pydicom.uid.generate_uid(), 1
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    [image] = images([path])
    assert (image.frames, image.attributes["Modality"]) == (10, "CT")
    # One instance, ten slices: a CT series for `requires: [ct]` and the engine's input.
    assert ct_series([image]) == series
    assert ct_series(images(paths[:1])) is None  # one single-frame slice is not
    volume = CtCache([image]).get(series, PRE)
    assert single is not None and volume is not None
    np.testing.assert_array_equal(volume, single)
