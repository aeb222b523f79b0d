"""From spooled instances to engine inputs: decode, window, split into hips, resize.

Every accepted transfer syntax is decoded by pydicom with the pylibjpeg,
openjpeg and JPEG-LS plug-ins. The picture is what a viewer shows (Modality LUT,
then VOI LUT or window, else a robust percentile window; MONOCHROME1 inverted),
see :mod:`engines.pixels`. An AP pelvis is split into its hips, the left one
mirrored, which half is which following the image's Patient Orientation (a PA or
flipped image is mirrored the other way, see :mod:`engines.regions`); pixel spacing
makes pixels square before the resize. Anything wrong
with the pixel data raises :class:`PreprocessError` naming the instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.errors import UNREADABLE_DICOM, DicomNodeError, describe
from dicom_node.models import SourceImage
from engines.manifest import Preprocessing
from engines.pixels import (
    Image,
    InputGeometry,
    PixelDataError,
    display_pixels,
    pixel_spacing,
    prepare,
)
from engines.regions import HipRegion, RegionError, hip_regions


class PreprocessError(DicomNodeError, ValueError):
    """An instance's pixel data cannot become an engine input."""


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """A decoded source image: its header (pixels dropped) and the displayed picture."""

    source: SourceImage
    header: Dataset
    picture: Image  # [0, 1], the source image's grid
    spacing: tuple[float, float] | None
    regions: tuple[HipRegion, ...] = field(default=())

    def region(self, side: str) -> HipRegion:
        for region in self.regions:
            if region.side == side:
                return region
        raise PreprocessError(
            f"SOP instance {self.source.sop_instance_uid}: shows no {side} hip "
            f"(laterality {self.source.laterality or 'none'})"
        )


@dataclass(frozen=True)
class HipInput:
    """One hip as an engine input, with the way back to its source image."""

    image: PreparedImage
    region: HipRegion
    geometry: InputGeometry
    pixels: Image  # (size, size) in [0, 1], canonical orientation


def load_image(source: SourceImage) -> PreparedImage:
    """Read and decode one spooled instance."""
    uid = source.sop_instance_uid
    try:
        ds = pydicom.dcmread(source.path)
    except UNREADABLE_DICOM as exc:
        raise PreprocessError(
            f"SOP instance {uid}: cannot read {source.path.name} ({describe(exc)})"
        ) from exc
    try:
        picture = display_pixels(ds)
        regions = hip_regions(picture.shape, source.laterality, ds.get("PatientOrientation"))
    except (PixelDataError, RegionError) as exc:
        message = str(exc)
        raise PreprocessError(
            message if uid in message else f"SOP instance {uid}: {message}"
        ) from exc
    del ds.PixelData  # the header is all the reports need; the picture is kept decoded
    return PreparedImage(source, ds, picture, pixel_spacing(ds), regions)


def hip_input(image: PreparedImage, side: str, pre: Preprocessing) -> HipInput:
    region = image.region(side)
    pixels, geometry = prepare(region.cut(image.picture), image.spacing, pre.size)
    return HipInput(image, region, geometry, pixels)


def normalise(pixels: Image, pre: Preprocessing) -> Image:
    """The manifest's (x - mean) / std, as the engine was trained."""
    out: Image = ((pixels - pre.mean) / pre.std).astype(np.float32)
    return out


class ImageCache:
    """Each source image decoded once per study, however many engines use it."""

    def __init__(self) -> None:
        self._images: dict[Path, PreparedImage] = {}

    def get(self, source: SourceImage) -> PreparedImage:
        if source.path not in self._images:
            self._images[source.path] = load_image(source)
        return self._images[source.path]

    def images(self) -> tuple[PreparedImage, ...]:
        return tuple(self._images.values())
