"""Deterministic identities of the node's results.

Series UIDs are derived from the study and the series' own attributes
(:func:`series_uid`): the results that share a series agree on every series-level value
(an SR's priority in its Series Description, an overlay's engine, laterality and body
part), so a PACS's series list describes each of them truly. An object is built with a
provisional SOP Instance UID (from the study, the engines and versions, and the source
instances) and then given its final one from what it shows
(:func:`with_content_uid`: a digest of its content and evidence). A resend after a
crash, or a rerun of the same study that finds the same, is the same object, so a
PACS never holds duplicates; a rerun whose result differs (a lateral or a CT that
arrived later, new thresholds, a re-sent image) is a new object, which the outbox
sends, instead of new content under a UID the PACS already holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, generate_uid

_ROOT = "dicom-node/results"


def _uid(*parts: str) -> str:
    # One joined source: pydicom concatenates its entropy sources without a separator,
    # so ("1.2", "3") and ("1.23",) would hash alike.
    uid: str = generate_uid(entropy_srcs=["\x1f".join([_ROOT, *parts])])
    return uid


@dataclass(frozen=True)
class ResultIdentity:
    sop_instance_uid: str
    series_number: int
    instance_number: int


def series_uid(study_uid: str, kind: str, *attributes: str) -> str:
    """The series of the node's results of ``kind`` ("sr", "sc") in the study whose
    series-level attributes (General Series: number, description, laterality, body part)
    are ``attributes``. A series' attributes hold for all its instances: a rerun that
    finds another priority, or an overlay of another engine or hip, is in another series
    (an SR named "AI triage NONE" must not hold the URGENT one of a reopened study)."""
    return _uid(study_uid, f"{kind}-series", *attributes)


def sr_identity(
    study_uid: str,
    engines: Sequence[tuple[str, str]],
    sources: Sequence[str],
    series_number: int,
) -> ResultIdentity:
    """The SR of a study: one per study, engine versions and source instances."""
    tag = ";".join(f"{name}={version}" for name, version in sorted(engines))
    return ResultIdentity(
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
        sop_instance_uid=_uid(study_uid, "sc", f"{engine[0]}={engine[1]}", source),
        series_number=series_number,
        instance_number=instance_number,
    )


def content_uid(ds: Dataset, kind: str, keywords: Sequence[str], after: str = "") -> str:
    """The UID of ``ds`` from its study, ``kind`` and the encoded ``keywords`` elements: what
    the object shows, so equal content gives an equal UID and different content a different
    one. ``after``: the UID of the report this content replaces, for content that returns to
    an earlier, superseded report's (it is a new object: :func:`~dicom_node.report.sr.
    as_latest_report`)."""
    shown = Dataset()
    digest = hashlib.sha256()
    for keyword in keywords:
        if keyword == "PixelData" and keyword in ds:
            digest.update(ds.PixelData)  # its bytes: its VR depends on the rest of the image
        elif keyword in ds:
            shown[keyword] = ds[keyword]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, shown)
    digest.update(buffer.getvalue())
    if after:
        digest.update(f"\x1fafter\x1f{after}".encode())
    return _uid(str(ds.StudyInstanceUID), kind, digest.hexdigest())


def with_uid(ds: Dataset, uid: str) -> Dataset:
    """``ds`` with ``uid`` as its SOP Instance UID, in the data set and its File Meta."""
    ds.SOPInstanceUID = uid
    if "MediaStorageSOPInstanceUID" in getattr(ds, "file_meta", Dataset()):
        ds.file_meta.MediaStorageSOPInstanceUID = UID(uid)
    return ds


def with_content_uid(ds: Dataset, kind: str, keywords: Sequence[str]) -> Dataset:
    """``ds`` with its SOP Instance UID (data set and File Meta) from :func:`content_uid`."""
    return with_uid(ds, content_uid(ds, kind, keywords))


# Whose and which study's it is, as the PACS files it: a study resent with a corrected
# patient name, ID or accession makes results with new UIDs, which are sent (the same UIDs
# would be taken for the objects already delivered, and the PACS would keep the old ones).
_PATIENT_AND_STUDY = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID",
    "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyDescription",
)  # fmt: skip
# What each result shows: the SR its content tree and evidence, an overlay its pixels
# (heat map and banner) and the image it was made from; both, whose they are and where
# they are filed (a changed results.*_series_number put the same UIDs in new series).
SR_CONTENT = (
    "ContentSequence", "CurrentRequestedProcedureEvidenceSequence", "SeriesInstanceUID",
    *_PATIENT_AND_STUDY,
)  # fmt: skip
SC_CONTENT = (
    "PixelData", "SourceImageSequence", "DerivationDescription", "SeriesInstanceUID",
    *_PATIENT_AND_STUDY,
)  # fmt: skip


def device_uid() -> str:
    """The software as a device observer, where no installation's own UID is given (the
    node gives its own: :meth:`dicom_node.state.State.device_uid`)."""
    return _uid("device-observer")
