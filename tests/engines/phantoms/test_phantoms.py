from __future__ import annotations

import time

import numpy as np
import pytest

from engines.models.hip_screen import SCREEN_CLASSES
from engines.models.hipnet import FAILURE_CLASSES
from engines.phantoms import (
    MAX_SIZE,
    MIN_SIZE,
    Phantom,
    PhantomError,
    ap_pelvis,
    prosthesis_hip,
    screen_hip,
)
from engines.regions import split_hips

LESIONS = [label for label in SCREEN_CLASSES if label != "normal"]


def _same(a: Phantom, b: Phantom) -> bool:
    return (
        a.image.tobytes() == b.image.tobytes()
        and np.array_equal(a.mask, b.mask)
        and (a.label, a.view) == (b.label, b.view)
    )


@pytest.mark.parametrize("label", SCREEN_CLASSES)
def test_screen_is_deterministic(label: str) -> None:
    assert _same(screen_hip(label, 7, 96), screen_hip(label, 7, 96))


@pytest.mark.parametrize("label", FAILURE_CLASSES)
@pytest.mark.parametrize("view", ["AP", "LATERAL"])
def test_prosthesis_is_deterministic(label: str, view: str) -> None:
    assert _same(prosthesis_hip(label, view, 7, 96), prosthesis_hip(label, view, 7, 96))


def test_pelvis_is_deterministic() -> None:
    a, b = (
        ap_pelvis("osteoarthritis", "normal", 3, 64),
        ap_pelvis("osteoarthritis", "normal", 3, 64),
    )
    assert a[2].tobytes() == b[2].tobytes()
    assert _same(a[0], b[0]) and _same(a[1], b[1])


def test_different_seeds_differ() -> None:
    images = [screen_hip("normal", seed, 96).image for seed in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(images[i] - images[j]).mean() > 0.01
    assert not np.array_equal(
        prosthesis_hip("dislocation", "AP", 0, 96).image,
        prosthesis_hip("dislocation", "AP", 1, 96).image,
    )


@pytest.mark.parametrize("size", [MIN_SIZE, 96, 128, 257])
def test_range_dtype_shape(size: int) -> None:
    phantoms = [screen_hip(label, 1, size) for label in SCREEN_CLASSES]
    phantoms += [prosthesis_hip(f, v, 1, size) for f in FAILURE_CLASSES for v in ("AP", "LATERAL")]
    for ph in phantoms:
        assert ph.image.shape == (size, size) and ph.mask.shape == (size, size)
        assert ph.image.dtype == np.float32 and ph.mask.dtype == np.bool_
        assert float(ph.image.min()) >= 0.0 and float(ph.image.max()) <= 1.0
        assert np.isfinite(ph.image).all()
        # A radiograph, not a blank: air, soft tissue, bone all present.
        assert float(ph.image.std()) > 0.05


def test_labels_and_views() -> None:
    assert screen_hip("osteoarthritis", 0, 64).label == "osteoarthritis"
    assert screen_hip("osteoarthritis", 0, 64).view == "AP"
    lateral = prosthesis_hip("polyethylene_wear", "LATERAL", 0, 64)
    assert (lateral.label, lateral.view) == ("polyethylene_wear", "LATERAL")


def test_normal_has_an_empty_mask() -> None:
    for seed in range(3):
        assert not screen_hip("normal", seed, 96).mask.any()


@pytest.mark.parametrize("label", LESIONS)
def test_lesion_is_drawn_inside_its_mask(label: str) -> None:
    """Same seed, same anatomy: the lesion changes the image mostly where its mask is."""
    for seed in range(4):
        lesion, normal = screen_hip(label, seed, 128), screen_hip("normal", seed, 128)
        assert lesion.mask.sum() > 20
        diff = np.abs(lesion.image - normal.image)
        assert diff[lesion.mask].mean() > 3.0 * diff[~lesion.mask].mean()


@pytest.mark.parametrize("label", FAILURE_CLASSES)
def test_failure_is_drawn_inside_its_mask(label: str) -> None:
    """The AP of a failure is that seed's THA screening phantom plus the failure sign."""
    for seed in range(4):
        failing = prosthesis_hip(label, "AP", seed, 128)
        intact = screen_hip("total_hip_arthroplasty", seed, 128)
        assert failing.mask.sum() > 20
        diff = np.abs(failing.image - intact.image)
        assert diff[failing.mask].mean() > 2.5 * diff[~failing.mask].mean()


def _metal_bottom(image: np.ndarray) -> int:
    """The lowest row with metal (saturated, whatever the exposure's gain): the stem tip."""
    metal = image > image.max() - 0.12
    return int(np.nonzero(metal.sum(axis=1) >= 3)[0].max())


@pytest.mark.parametrize("label", FAILURE_CLASSES)
def test_ap_and_lateral_share_the_geometry(label: str) -> None:
    """The craniocaudal axis is shared: the sign and the stem lie on the same rows."""
    size = 128
    for seed in range(4):
        ap = prosthesis_hip(label, "AP", seed, size)
        lateral = prosthesis_hip(label, "LATERAL", seed, size)
        assert ap.mask.any() and lateral.mask.any()
        rows_ap, rows_lat = np.nonzero(ap.mask)[0], np.nonzero(lateral.mask)[0]
        assert abs(rows_ap.mean() - rows_lat.mean()) < 0.06 * size
        # The stem tip: the lowest row of saturated metal.
        tip_ap, tip_lat = _metal_bottom(ap.image), _metal_bottom(lateral.image)
        assert abs(tip_ap - tip_lat) < 0.08 * size
        # But it is another projection, not a copy.
        assert np.abs(ap.image - lateral.image).mean() > 0.03


def test_pelvis_halves_are_the_hip_phantoms() -> None:
    right, left, pelvis = ap_pelvis("femoral_neck_fracture", "total_hip_arthroplasty", 5, 96)
    assert pelvis.shape == (96, 192) and pelvis.dtype == np.float32
    assert (right.label, left.label) == ("femoral_neck_fracture", "total_hip_arthroplasty")
    r, lt = split_hips(pelvis)
    assert np.array_equal(r, right.image) and np.array_equal(lt, left.image)
    assert right.mask.any() and left.mask.any()


def test_pelvis_midline_is_continuous() -> None:
    """The two columns at the midline are no more different than neighbouring columns."""
    for seed in range(3):
        _, _, pelvis = ap_pelvis("normal", "normal", seed, 128)
        step = np.abs(pelvis[:, 127] - pelvis[:, 128]).mean()
        usual = np.abs(pelvis[:, 120] - pelvis[:, 121]).mean()
        assert step < 3.0 * usual + 0.02


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: screen_hip("fracture", 0), r"label: expected one of .*'normal'.*got \"fracture\""),
        (lambda: screen_hip("normal", 0, 63), r"size: expected 64-4096 pixels, got 63"),
        (lambda: screen_hip("normal", 0, MAX_SIZE + 1), r"size: expected 64-4096 pixels, got 4097"),
        (lambda: screen_hip("normal", 0, 128.0), r"size: expected an integer 64-4096, got 128.0"),  # type: ignore[arg-type]
        (lambda: screen_hip("normal", -1), r"seed: expected a non-negative integer, got -1"),
        (
            lambda: prosthesis_hip("loose", "AP", 0),
            r"label: expected one of .*'aseptic_loosening'.*got \"loose\"",
        ),
        (
            lambda: prosthesis_hip("dislocation", "PA", 0),
            r"view: expected one of \('AP', 'LATERAL'\), got \"PA\"",
        ),
        (lambda: prosthesis_hip("dislocation", "AP", 0, 5000), r"got 5000"),
        (lambda: ap_pelvis("normal", "bad", 0), r"left: expected one of .*got \"bad\""),
        (lambda: ap_pelvis("bad", "normal", 0), r"right: expected one of .*got \"bad\""),
        (lambda: ap_pelvis("normal", "normal", 0, 32), r"size: expected 64-4096 pixels, got 32"),
    ],
)
def test_bad_arguments_raise(call: object, match: str) -> None:
    with pytest.raises(PhantomError, match=match):
        call()  # type: ignore[operator]


def test_phantom_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="label"):
        screen_hip("bad", 0)


def test_fast_enough() -> None:
    """Budget: about 5 ms per 128-px phantom on one core; the bound is generous for CI."""
    start = time.process_time()
    for seed in range(100):
        screen_hip(SCREEN_CLASSES[seed % len(SCREEN_CLASSES)], seed, 128)
    assert time.process_time() - start < 3.0
    start = time.process_time()
    for seed in range(20):
        prosthesis_hip(FAILURE_CLASSES[seed % len(FAILURE_CLASSES)], "LATERAL", seed, 256)
    assert time.process_time() - start < 2.0
