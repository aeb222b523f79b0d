from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.synthetic import StudyIdentity, make_dx
from engines.pixels import PixelDataError, display_pixels, pixel_spacing, square_pixels, to_input


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
