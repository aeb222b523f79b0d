from __future__ import annotations

import numpy as np
import pytest

from dicom_node.errors import DicomNodeError
from engines.regions import RegionError, join_hips, split_hips


def test_split_gives_canonical_hips() -> None:
    image = np.arange(3 * 8).reshape(3, 8)
    right, left = split_hips(image)
    assert np.array_equal(right, image[:, :4])
    assert np.array_equal(left, image[:, :3:-1])
    assert right.flags.c_contiguous and left.flags.c_contiguous


@pytest.mark.parametrize("shape", [(5, 2), (4, 10), (7, 64)])
def test_join_inverts_split_for_even_widths(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    assert np.array_equal(join_hips(*split_hips(image)), image)
    right, left = split_hips(image)
    assert np.array_equal(split_hips(join_hips(right, left))[1], left)


def test_odd_width_drops_the_middle_column() -> None:
    image = np.arange(2 * 7).reshape(2, 7)
    right, left = split_hips(image)
    assert right.shape == left.shape == (2, 3)
    assert np.array_equal(join_hips(right, left), np.delete(image, 3, axis=1))


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), (5, 1), (5, 0)])
def test_split_refuses_other_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(RegionError, match=rf"got shape \({shape[0]},"):
        split_hips(np.zeros(shape))


def test_join_refuses_mismatched_regions() -> None:
    with pytest.raises(RegionError, match=r"got \(4, 4\) and \(4, 5\)"):
        join_hips(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(RegionError, match=r"got \(4,\) and \(4,\)"):
        join_hips(np.zeros(4), np.zeros(4))


def test_region_error_is_in_the_hierarchy() -> None:
    assert issubclass(RegionError, DicomNodeError) and issubclass(RegionError, ValueError)
