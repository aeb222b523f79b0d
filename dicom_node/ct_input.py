"""A study's CT series as an engine's CT input, read once per study.

The series' files are read from the spool (:func:`engines.volumes.read_ct_series`,
geometry checked), resampled and fitted into the engine's grid with its HU window
(:func:`engines.ct_grid.engine_volume`, the function training used). A series that
does not make a regular volume is logged with the reason and treated as missing:
the engine masks its CT input and the report says the CT was not used, rather than
the whole study failing for a scan the engine can do without.

Each hip gets the part of the series that shows it, in the engines' canonical
orientation (the patient's right hip; a left hip is mirrored right-left, as its
radiograph region is). A series with Laterality R or L shows that hip only: the other
hip gets no CT. A bilateral series (Laterality B, or no laterality and a field at least
:data:`engines.ct_grid.BILATERAL_FIELD_MM` wide) is split at the patient's midline, the
axis of mirror symmetry of its bone (:func:`engines.ct_grid.midline_x_mm`; the centre of
the field when none is found), into two halves of equal width. A narrower series without
laterality shows one hip, which one its position says: the patient lies about centred on
the table, whose centre is near x = 0 in patient coordinates, and a hip lies ~90 mm to a
side, so a field centred at least :data:`SIDE_OFFSET_MM` to the patient's right (x < 0)
shows the right hip and one as far to the left the left hip. A field nearer the centre
is used for neither hip (logged): a wrong-side CT is worse than none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from dicom_node.models import SourceImage
from dicom_node.route.plan import SIDES
from engines.ct_grid import (
    BILATERAL_FIELD_MM,
    SIDE_OFFSET_MM,
    engine_volume,
    field_centre_x_mm,
    field_width_mm,
    hemi_volume,
    hip_of_field,
    midline_x_mm,
)
from engines.manifest import Preprocessing
from engines.volumes import CtVolume, VolumeError, read_ct_series

log = logging.getLogger(__name__)

Volume = npt.NDArray[np.float32]


class CtCache:
    """Each CT series of a study read once, each engine grid computed once."""

    def __init__(self, images: Sequence[SourceImage]) -> None:
        self._images = tuple(images)
        self._volumes: dict[str, CtVolume | None] = {}
        self._unusable: dict[str, str] = {}  # why a series is not a volume, by series UID
        self._midlines: dict[str, float | None] = {}
        self._sides_logged: set[str] = set()
        self._inputs: dict[tuple[str, Preprocessing, str], Volume | None] = {}

    def volume(self, series_uid: str) -> CtVolume | None:
        if series_uid not in self._volumes:
            # The series' slices only: a localizer (topogram) kept in the series has another
            # orientation and would make the whole series unusable.
            paths = [i.path for i in self._images if i.series_uid == series_uid and i.ct_slice]
            try:
                self._volumes[series_uid] = read_ct_series(paths, series_uid)
            except VolumeError as exc:
                log.warning("CT series %s not used: %s", series_uid, exc)
                self._volumes[series_uid] = None
                self._unusable[series_uid] = str(exc)
        return self._volumes[series_uid]

    def unusable(self, series_uid: str) -> str | None:
        """Why the series (once read) is not a volume; None if it is, or is not read yet."""
        return self._unusable.get(series_uid)

    def midline(self, series_uid: str) -> float | None:
        """Where a bilateral series is split (patient x, mm): the patient's midline, or
        None (the field's centre) when the series' bone gives none."""
        if series_uid not in self._midlines:
            volume = self.volume(series_uid)
            found = None if volume is None else midline_x_mm(volume)
            self._midlines[series_uid] = found
            where = (
                "its centre (no mirror-symmetric bone found)"
                if found is None
                else f"the midline x = {found:.1f} mm"
            )
            log.info("CT series %s: both hips in one field, split at %s", series_uid, where)
        return self._midlines[series_uid]

    def part(self, series_uid: str, side: str) -> str | None:
        """Which part of the series shows hip ``side``: "whole", "half", or None (the
        series shows the other hip only, or is not a usable volume)."""
        if side not in SIDES:
            raise VolumeError(f"side: expected R or L, got {side!r}")
        laterality = next(
            (i.laterality for i in self._images if i.series_uid == series_uid and i.laterality),
            "",
        )
        if laterality in SIDES:
            return "whole" if laterality == side else None
        volume = self.volume(series_uid)
        if volume is None:
            return None
        if laterality == "B" or field_width_mm(volume) >= BILATERAL_FIELD_MM:
            return "half"
        shown = self._side_by_position(series_uid, volume)
        return "whole" if shown == side else None

    def _side_by_position(self, series_uid: str, volume: CtVolume) -> str | None:
        centre = field_centre_x_mm(volume)
        shown = hip_of_field(centre, centre)  # the centre alone: the field is narrow
        if series_uid not in self._sides_logged:
            self._sides_logged.add(series_uid)
            if shown is None:
                log.warning(
                    "CT series %s: one hip without laterality, its field centred at x = %.1f mm "
                    "(within %.0f mm of the table's centre): not used for either hip",
                    series_uid, centre, SIDE_OFFSET_MM,
                )  # fmt: skip
            else:
                log.info("CT series %s: one hip without laterality, at x = %.1f mm: the %s hip",
                         series_uid, centre, "right" if shown == "R" else "left")  # fmt: skip
        return shown

    def get(self, series_uid: str | None, pre: Preprocessing, side: str) -> Volume | None:
        """The engine input (D, H, W) for hip ``side`` of the series, canonical (a left hip
        mirrored), or None when there is none to use for that hip."""
        if series_uid is None:
            return None
        if pre.volume is None:
            raise VolumeError("preprocessing: the engine's manifest gives no CT grid (volume)")
        key = (series_uid, pre, side)
        if key not in self._inputs:
            part = self.part(series_uid, side)
            volume = self.volume(series_uid)
            if part is None or volume is None:
                self._inputs[key] = None
            else:
                source = (
                    hemi_volume(volume, side, pre.volume_spacing_mm, self.midline(series_uid))
                    if part == "half"
                    else volume
                )
                grid = engine_volume(
                    source,
                    pre.volume,
                    pre.volume_spacing_mm,
                    (pre.hu_center, pre.hu_width),
                    pre.mean,
                    pre.std,
                )
                # [D, H, W] with W right->left: a left hip mirrored into the right hip's pose.
                self._inputs[key] = np.ascontiguousarray(grid[:, :, ::-1]) if side == "L" else grid
        return self._inputs[key]
