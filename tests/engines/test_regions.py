"""Hip regions by laterality and Patient Orientation (split_hips is in tests/engines/phantoms)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.regions import RegionError, display_flips, hip_regions


@pytest.mark.parametrize(
    ("orientation", "flips"),
    [
        (None, (False, False)),
        (["L", "F"], (False, False)),  # the AP display convention
        (["R", "F"], (True, False)),  # PA, or a flipped read-out
        (["L", "H"], (False, True)),
        (["r", "h"], (True, True)),
        (["RA", "FP"], (True, False)),  # oblique: the first letter leads
        (["A", "F"], (False, False)),  # a lateral: neither
        (["L"], (False, False)),  # unreadable: the convention
        # Not two directions of APRLHF: the convention, as the overlay says (was read as
        # R, while the overlay stamped the convention's L\F).
        (["R", "FEET"], (False, False)),
        (["R", ""], (False, False)),
        ([], (False, False)),
    ],
)
def test_display_flips(orientation: list[str] | None, flips: tuple[bool, bool]) -> None:
    assert display_flips(orientation) == flips


def test_a_flipped_pelvis_has_its_right_hip_in_the_right_half() -> None:
    right, left = hip_regions((4, 10), "B", ["R", "F"])
    assert (right.side, right.columns, right.mirrored) == ("R", (5, 10), True)
    assert (left.side, left.columns, left.mirrored) == ("L", (0, 5), False)
    right, left = hip_regions((4, 10), "", None)
    assert (right.columns, right.mirrored, left.columns, left.mirrored) == (
        (0, 5),
        False,
        (5, 10),
        True,
    )


@pytest.mark.parametrize(
    ("laterality", "orientation", "mirrored"),
    [
        ("R", ["P", "F"], False),  # the right lateral as the phantoms draw it: canonical
        ("L", ["A", "F"], True),  # the left lateral, the mirror image
        ("L", ["P", "F"], False),  # a site that hangs left laterals as right ones (was: True)
        ("R", ["A", "F"], True),  # and one that hangs right laterals the other way round
        ("L", None, True),  # no orientation: the side decides
        ("L", ["L", "F"], True),  # a single-hip AP: as before
        ("L", ["R", "F"], False),
    ],
)
def test_a_single_hip_is_mirrored_by_how_it_is_displayed(
    laterality: str, orientation: list[str] | None, mirrored: bool
) -> None:
    [region] = hip_regions((4, 10), laterality, orientation)
    assert (region.side, region.mirrored) == (laterality, mirrored)


def test_cut_and_place_undo_each_other_with_both_flips() -> None:
    picture = np.arange(4 * 10, dtype=np.float32).reshape(4, 10)
    for region in hip_regions(picture.shape, "B", ["R", "H"]):
        assert region.upside_down
        canvas = np.zeros_like(picture)
        region.place(region.cut(picture), canvas)
        part = slice(*region.columns)
        np.testing.assert_array_equal(canvas[:, part], picture[:, part])
    [single] = hip_regions(picture.shape, "R", ["R", "H"])
    np.testing.assert_array_equal(single.cut(picture), np.flipud(np.fliplr(picture)))


@pytest.mark.parametrize("laterality", ["B", ""])
@pytest.mark.parametrize("orientation", [["A", "F"], ["P", "F"], ["PL", "F"]])
def test_an_image_with_front_back_rows_is_never_split_into_two_hips(
    orientation: list[str], laterality: str
) -> None:
    # Its front half was read as the right hip and its back half, mirrored, as the left.
    with pytest.raises(
        RegionError,
        match=rf"^Patient Orientation {orientation[0]}\\F: the image's rows run front-back "
        rf"\(a lateral projection\) but its laterality is {laterality or 'not given'}: ",
    ):
        hip_regions((10, 8), laterality, orientation)
    assert len(hip_regions((10, 8), "R", orientation)) == 1  # one hip: as before


def test_too_narrow_an_image_is_refused() -> None:
    with pytest.raises(RegionError, match=r"at least 2 columns wide, got \(4, 1\)"):
        hip_regions((4, 1), "B", ["R", "F"])


@pytest.mark.parametrize(("orientation", "toward"), [(["F", "L"], "feet"), (["HR", "L"], "head")])
def test_an_image_turned_90_degrees_is_refused(orientation: list[str], toward: str) -> None:
    # Was split into halves that each held parts of both hips, analysed without a word.
    with pytest.raises(
        RegionError,
        match=rf"^Patient Orientation {orientation[0]}\\{orientation[1]}: the image's rows "
        rf"run toward the {toward} \(turned 90 degrees\)",
    ):
        hip_regions((10, 8), "B", orientation)
