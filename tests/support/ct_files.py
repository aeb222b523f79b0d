"""A CT series written as files for the reading and grid tests (tests/engines)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.synthetic import StudyIdentity, make_ct_series, write

SERIES = "1.2.826.0.1.3680043.8.498.77"
IDENTITY = StudyIdentity.synthetic(11)
# Rows along patient right (-x, an LPS flip), columns tilted 20 degrees out of the axial plane.
_C, _S = math.cos(math.radians(20.0)), math.sin(math.radians(20.0))
TILTED = (-1.0, 0.0, 0.0, 0.0, _C, -_S)
NORMAL = np.cross(TILTED[:3], TILTED[3:])  # (0, -sin, -cos)
SPACING = (2.5, 0.7, 0.7)  # slice, row, column (mm)
ORIGIN = (10.0, -20.0, 30.0)


def random_hu(depth: int = 6, rows: int = 20, cols: int = 24, seed: int = 0) -> np.ndarray:
    """Integer HU in -1000..2000, distinct per slice (so order mistakes show)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 2000, size=(depth, rows, cols)).astype(np.float64)


def write_series(
    out: Path, volume: np.ndarray, *, prefix: str = "ct", series_uid: str = SERIES, **kwargs: Any
) -> list[Path]:
    """``volume`` ([z, y, x] HU) as the files of series ``series_uid`` in ``out``: tilted,
    flipped and anisotropic unless ``kwargs`` (make_ct_series' options) say otherwise."""
    options: dict[str, Any] = {
        "spacing_mm": SPACING,
        "origin_mm": ORIGIN,
        "orientation": TILTED,
        **kwargs,
    }
    datasets = make_ct_series(volume, identity=IDENTITY, series_uid=series_uid, **options)
    out.mkdir(parents=True, exist_ok=True)
    return [write(ds, out / f"{prefix}{k:03d}.dcm") for k, ds in enumerate(datasets)]
