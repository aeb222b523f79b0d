"""A study's CT series as an engine's CT input, read once per study.

The series' files are read from the spool (:func:`engines.volumes.read_ct_series`,
geometry checked), resampled and fitted into the engine's grid with its HU window
(:func:`engines.volumes.engine_volume`, the function training used). A series that
does not make a regular volume is logged with the reason and treated as missing:
the engine masks its CT input and the report says the CT was not used, rather than
the whole study failing for a scan the engine can do without.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from dicom_node.models import SourceImage
from engines.manifest import Preprocessing
from engines.volumes import CtVolume, VolumeError, engine_volume, read_ct_series

log = logging.getLogger(__name__)

Volume = npt.NDArray[np.float32]


class CtCache:
    """Each CT series of a study read once, each engine grid computed once."""

    def __init__(self, images: Sequence[SourceImage]) -> None:
        self._images = tuple(images)
        self._volumes: dict[str, CtVolume | None] = {}
        self._inputs: dict[tuple[str, Preprocessing], Volume | None] = {}

    def volume(self, series_uid: str) -> CtVolume | None:
        if series_uid not in self._volumes:
            paths = [i.path for i in self._images if i.series_uid == series_uid]
            try:
                self._volumes[series_uid] = read_ct_series(paths, series_uid)
            except VolumeError as exc:
                log.warning("CT series %s not used: %s", series_uid, exc)
                self._volumes[series_uid] = None
        return self._volumes[series_uid]

    def get(self, series_uid: str | None, pre: Preprocessing) -> Volume | None:
        """The engine input (D, H, W) of the series, or None when there is none to use."""
        if series_uid is None:
            return None
        if pre.volume is None:
            raise VolumeError("preprocessing: the engine's manifest gives no CT grid (volume)")
        key = (series_uid, pre)
        if key not in self._inputs:
            volume = self.volume(series_uid)
            self._inputs[key] = (
                None
                if volume is None
                else engine_volume(
                    volume,
                    pre.volume,
                    pre.volume_spacing_mm,
                    (pre.hu_center, pre.hu_width),
                    pre.mean,
                    pre.std,
                )
            )
        return self._inputs[key]
