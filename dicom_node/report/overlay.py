"""Drawing an overlay: the windowed radiograph, a colour heat map blended in, a text banner.

Pure numpy and Pillow (its bundled scalable font), no I/O. The banner sits
above the image so it never hides anatomy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

RGB = npt.NDArray[np.uint8]

# A perceptually ordered blue-cyan-yellow-red ramp (anchors of a "jet"-like map).
_ANCHORS = np.array(
    [
        [0.0, 0.0, 0.5],
        [0.0, 0.3, 1.0],
        [0.0, 0.9, 0.9],
        [1.0, 1.0, 0.0],
        [1.0, 0.4, 0.0],
        [0.8, 0.0, 0.0],
    ]
)
BANNER_BACKGROUND = (0, 0, 0)
BANNER_TEXT = (255, 255, 255)
URGENT_TEXT = (255, 80, 80)


def colour_map(values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """(H, W) in [0, 1] to (H, W, 3) colours in [0, 1]."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(v).astype(int)
    high = np.minimum(low + 1, len(_ANCHORS) - 1)
    t = (v - low)[..., None]
    out: npt.NDArray[np.float64] = _ANCHORS[low] * (1 - t) + _ANCHORS[high] * t
    return out


def blend(
    picture: npt.NDArray[np.floating], heat: npt.NDArray[np.floating], floor: float = 0.2
) -> RGB:
    """The greyscale picture with the heat map blended in where it exceeds ``floor``."""
    grey = np.repeat(np.clip(picture, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float64)
    alpha = (0.55 * np.clip((heat - floor) / (1.0 - floor), 0.0, 1.0))[..., None]
    mixed = grey * (1 - alpha) + colour_map(heat) * alpha
    out: RGB = np.rint(mixed * 255).astype(np.uint8)
    return out


def scale_down(image: npt.NDArray[np.floating], max_edge: int) -> npt.NDArray[np.float32]:
    """Shrink (area-averaged) so the longer edge is at most ``max_edge``."""
    h, w = image.shape
    factor = max(h, w) / max_edge
    if factor <= 1:
        return np.asarray(image, dtype=np.float32)
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    pil = PILImage.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.asarray(pil.resize(size, PILImage.Resampling.BOX), dtype=np.float32)


def with_banner(image: RGB, lines: Sequence[tuple[str, bool]]) -> RGB:
    """``image`` under a black banner with each entry's text (True: urgent colour), wrapped
    at spaces to the image's width: on a narrow image a line takes several rows rather than
    losing its end (the priority, the warning)."""
    width = image.shape[1]
    size = max(11, min(28, width // 48))
    font = ImageFont.load_default(size=size)
    line_height = int(size * 1.35)
    measure = ImageDraw.Draw(PILImage.new("RGB", (1, 1)))
    rows = [
        (row, urgent)
        for text, urgent in lines
        for row in _wrapped(text, lambda t: measure.textlength(t, font=font) <= width - size)
    ]
    height = line_height * len(rows) + size // 2
    banner = PILImage.new("RGB", (width, height), BANNER_BACKGROUND)
    draw = ImageDraw.Draw(banner)
    for n, (text, urgent) in enumerate(rows):
        draw.text(
            (size // 2, size // 4 + n * line_height),
            text,
            fill=URGENT_TEXT if urgent else BANNER_TEXT,
            font=font,
        )
    out: RGB = np.concatenate([np.asarray(banner, dtype=np.uint8), image], axis=0)
    return out


def _wrapped(text: str, fits: Callable[[str], bool]) -> list[str]:
    """``text`` in rows that each ``fit``: broken at spaces, a word too long for a row of its
    own broken between characters (at least one character per row)."""
    rows: list[str] = []
    row = ""
    for word in text.split():
        joined = f"{row} {word}" if row else word
        if fits(joined):
            row = joined
            continue
        if row:
            rows.append(row)
        row = word
        while not fits(row) and len(row) > 1:
            cut = 1  # the longest start that fits, one character at least
            while cut + 1 < len(row) and fits(row[: cut + 1]):
                cut += 1
            rows.append(row[:cut])
            row = row[cut:]
    if row or not rows:
        rows.append(row)
    return rows
