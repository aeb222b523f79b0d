"""Drawing an overlay: the colour ramp, blending, shrinking and the text banner."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from dicom_node.report.overlay import (
    BANNER_BACKGROUND,
    URGENT_TEXT,
    blend,
    colour_map,
    scale_down,
    with_banner,
)


def ramp(height: int, width: int) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))


# --- colour_map -----------------------------------------------------------------------------


def test_colour_map_endpoints_and_shape() -> None:
    values = np.array([[0.0, 1.0], [0.5, 0.2]])
    colours = colour_map(values)
    assert colours.shape == (2, 2, 3)
    assert colours.dtype == np.float64
    np.testing.assert_allclose(colours[0, 0], [0.0, 0.0, 0.5])  # cold: dark blue
    np.testing.assert_allclose(colours[0, 1], [0.8, 0.0, 0.0])  # hot: dark red
    # 0.5 is half way between the cyan and yellow anchors.
    np.testing.assert_allclose(colours[1, 0], [0.5, 0.95, 0.45])
    # 0.2 is exactly the second anchor.
    np.testing.assert_allclose(colours[1, 1], [0.0, 0.3, 1.0])
    assert colours.min() >= 0.0 and colours.max() <= 1.0


def test_colour_map_clips_out_of_range_values() -> None:
    colours = colour_map(np.array([-3.0, 0.0, 1.0, 7.5]))
    assert colours.shape == (4, 3)
    np.testing.assert_array_equal(colours[0], colours[1])
    np.testing.assert_array_equal(colours[2], colours[3])


def test_colour_map_is_continuous() -> None:
    colours = colour_map(np.linspace(0.0, 1.0, 1001))
    assert np.abs(np.diff(colours, axis=0)).max() < 0.01


# --- blend ------------------------------------------------------------------------------


def test_blend_keeps_grey_below_the_floor() -> None:
    picture = ramp(8, 16)
    heat = np.full((8, 16), 0.19, dtype=np.float32)
    out = blend(picture, heat, floor=0.2)
    assert out.shape == (8, 16, 3)
    assert out.dtype == np.uint8
    grey = np.rint(picture * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)
    # At exactly the floor the map still adds nothing.
    np.testing.assert_array_equal(blend(picture, np.full_like(heat, 0.2))[..., 1], grey)


def test_blend_colours_where_the_map_is_hot() -> None:
    picture = np.full((4, 4), 0.5, dtype=np.float32)
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[1, 2] = 1.0
    out = blend(picture, heat)
    # Fully hot: 45 % grey, 55 % the ramp's dark red.
    expected = np.rint((0.5 * 0.45 + np.array([0.8, 0.0, 0.0]) * 0.55) * 255)
    np.testing.assert_array_equal(out[1, 2], expected.astype(np.uint8))
    untouched = np.ones((4, 4), dtype=bool)
    untouched[1, 2] = False
    assert (out[untouched] == 128).all()


def test_blend_clips_the_picture() -> None:
    picture = np.array([[-0.5, 1.5]], dtype=np.float32)
    out = blend(picture, np.zeros_like(picture))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255])


# --- scale_down ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "max_edge", "expected"),
    [
        ((300, 200), 100, (100, 67)),
        ((200, 300), 100, (67, 100)),
        ((1000, 1000), 250, (250, 250)),
        ((64, 128), 64, (32, 64)),
    ],
)
def test_scale_down_keeps_aspect_and_max_edge(
    shape: tuple[int, int], max_edge: int, expected: tuple[int, int]
) -> None:
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    out = scale_down(image, max_edge)
    assert out.shape == expected
    assert max(out.shape) == max_edge
    assert out.dtype == np.float32
    # Area averaging keeps the mean and the range.
    assert float(out.mean()) == pytest.approx(float(image.mean()), abs=0.01)
    assert out.min() >= image.min() - 1e-6 and out.max() <= image.max() + 1e-6


def test_scale_down_averages_blocks() -> None:
    image = np.array([[0.0, 1.0, 0.2, 0.2], [1.0, 0.0, 0.4, 0.4]], dtype=np.float32)
    np.testing.assert_allclose(scale_down(image, 2), [[0.5, 0.3]], atol=1e-6)


def test_scale_down_leaves_a_small_image_alone() -> None:
    image = np.arange(12, dtype=np.float64).reshape(3, 4) / 12
    out = scale_down(image, 4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image.astype(np.float32))


# --- with_banner -----------------------------------------------------------------------


def _drawn_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every text the banner draws."""
    texts: list[str] = []
    original = ImageDraw.ImageDraw.text

    def spy(self: ImageDraw.ImageDraw, xy: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
        texts.append(str(text))
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    return texts


def test_with_banner_adds_rows_above_the_image() -> None:
    image = np.full((20, 200, 3), 77, dtype=np.uint8)
    one = with_banner(image, [("one line", False)])
    three = with_banner(image, [("a", False), ("b", True), ("c", False)])
    assert one.dtype == np.uint8
    assert one.shape[1:] == (200, 3) and three.shape[1:] == (200, 3)
    added_one, added_three = one.shape[0] - 20, three.shape[0] - 20
    assert 0 < added_one < added_three
    # Font size 11 at this width: lines of 14 rows and a 5-row margin.
    assert (added_one, added_three) == (14 + 5, 3 * 14 + 5)
    np.testing.assert_array_equal(one[-20:], image)
    np.testing.assert_array_equal(three[-20:], image)


def test_with_banner_draws_light_and_urgent_text_on_black() -> None:
    image = np.zeros((4, 300, 3), dtype=np.uint8)
    out = with_banner(image, [("AI RESULT - TO BE VERIFIED", False), ("URGENT THING", True)])
    banner = out[:-4].astype(np.int32)
    background = (banner == np.array(BANNER_BACKGROUND)).all(axis=2)
    assert background.mean() > 0.7
    assert (banner.min(axis=2) > 200).sum() > 20  # white text
    urgent = (np.abs(banner - np.array(URGENT_TEXT)).max(axis=2) < 30).sum()
    assert urgent > 10  # red text


def test_with_banner_wraps_long_lines_at_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: cut with a tilde, which lost "priority URGENT" on a 256-px single-hip image.
    texts = _drawn_texts(monkeypatch)
    width = 128
    long = "RIGHT HIP: femoral neck fracture p=0.83 - priority URGENT"
    out = with_banner(np.zeros((8, width, 3), dtype=np.uint8), [("short", False), (long, True)])
    assert out.shape[1] == width
    assert texts[0] == "short"
    rows = texts[1:]
    assert len(rows) > 1 and " ".join(rows) == long  # every word, in order
    size = max(11, min(28, width // 48))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert all(draw.textbbox((size // 2, 0), row, font=font)[2] <= width for row in rows)
    # The banner's last column holds no text pixel; it grew a row per wrapped row.
    assert (out[:-8, -1] == 0).all()
    one_row = with_banner(np.zeros((8, width, 3), dtype=np.uint8), [("short", False)])
    assert out.shape[0] - one_row.shape[0] == len(rows) * int(size * 1.35)


@pytest.mark.parametrize("width", [64, 200, 1536])
def test_with_banner_never_overflows(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    texts = _drawn_texts(monkeypatch)
    size = max(11, min(28, width // 48))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [("W" * 80, False), ("i" * 260, True), ("mixed Wi " * 30, False)]
    with_banner(np.zeros((2, width, 3), dtype=np.uint8), lines)
    for text in texts:
        assert draw.textbbox((size // 2, 0), text, font=font)[2] <= width
    # Nothing lost: a word too long for a row is broken between characters.
    assert "".join(texts).replace(" ", "") == "".join(t for t, _ in lines).replace(" ", "")


def test_with_banner_keeps_a_line_that_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _drawn_texts(monkeypatch)
    with_banner(np.zeros((2, 1536, 3), dtype=np.uint8), [("fits easily", False)])
    assert texts == ["fits easily"]
