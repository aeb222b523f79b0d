"""Deterministic identities of the node's results.

Series and SOP Instance UIDs are derived from the study, the engines and
versions, and the source instances, so a resend after a crash (or a rerun of
the same study) is the same object and a PACS never holds duplicates. A study
that gains instances gets new SOP Instance UIDs (its sources differ) in the
same series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.uid import generate_uid

_ROOT = "dicom-node/results"


def _uid(*parts: str) -> str:
    # One joined source: pydicom concatenates its entropy sources without a separator,
    # so ("1.2", "3") and ("1.23",) would hash alike.
    uid: str = generate_uid(entropy_srcs=["\x1f".join([_ROOT, *parts])])
    return uid


@dataclass(frozen=True)
class ResultIdentity:
    series_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int


def sr_identity(
    study_uid: str,
    engines: Sequence[tuple[str, str]],
    sources: Sequence[str],
    series_number: int,
) -> ResultIdentity:
    """The SR of a study: one per study, engine versions and source instances."""
    tag = ";".join(f"{name}={version}" for name, version in sorted(engines))
    return ResultIdentity(
        series_uid=_uid(study_uid, "sr-series"),
        sop_instance_uid=_uid(study_uid, "sr", tag, *sorted(sources)),
        series_number=series_number,
        instance_number=1,
    )


def sc_identity(
    study_uid: str,
    engine: tuple[str, str],
    source: str,
    series_number: int,
    instance_number: int,
) -> ResultIdentity:
    """The overlay of one source image by one engine version."""
    return ResultIdentity(
        series_uid=_uid(study_uid, "sc-series"),
        sop_instance_uid=_uid(study_uid, "sc", f"{engine[0]}={engine[1]}", source),
        series_number=series_number,
        instance_number=instance_number,
    )


def device_uid() -> str:
    """The node as a device observer: one UID for every installation of this software."""
    return _uid("device-observer")
