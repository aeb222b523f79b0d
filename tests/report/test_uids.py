"""Deterministic identities of the SR and the overlays."""

from __future__ import annotations

import re

import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from dicom_node.report.uids import (
    SC_CONTENT,
    SR_CONTENT,
    ResultIdentity,
    device_uid,
    sc_identity,
    series_uid,
    sr_identity,
    with_content_uid,
)

STUDY = "1.2.826.0.1.3680043.8.498.1001"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.1002"
ENGINES = [("hip_screen", "1.0.0"), ("hipnet", "2.1.0")]
SOURCES = ["1.2.826.0.1.3680043.8.498.2001", "1.2.826.0.1.3680043.8.498.2002"]
UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid(uid: str) -> bool:
    return len(uid) <= 64 and UID.fullmatch(uid) is not None


def sr(
    study: str = STUDY,
    engines: list[tuple[str, str]] | None = None,
    sources: list[str] | None = None,
    series_number: int = 9001,
) -> ResultIdentity:
    return sr_identity(
        study,
        ENGINES if engines is None else engines,
        SOURCES if sources is None else sources,
        series_number,
    )


def sc(
    study: str = STUDY,
    engine: tuple[str, str] = ENGINES[0],
    source: str = SOURCES[0],
    instance_number: int = 1,
) -> ResultIdentity:
    return sc_identity(study, engine, source, 9002, instance_number)


def test_same_inputs_give_the_same_identity() -> None:
    assert sr() == sr()
    assert sc() == sc()
    assert sr() == sr_identity(STUDY, list(ENGINES), list(SOURCES), 9001)


def test_uids_are_valid() -> None:
    for identity in (sr(), sc(), sr(OTHER_STUDY), sc(engine=("hipnet", "2.1.0"))):
        assert valid(identity.sop_instance_uid), identity.sop_instance_uid
    assert valid(device_uid())


def test_numbers_are_passed_through() -> None:
    identity = sr(series_number=77)
    assert (identity.series_number, identity.instance_number) == (77, 1)
    overlay = sc(instance_number=3)
    assert (overlay.series_number, overlay.instance_number) == (9002, 3)
    # The numbers do not enter the UIDs.
    assert overlay.sop_instance_uid == sc(instance_number=1).sop_instance_uid
    assert identity.sop_instance_uid == sr(series_number=1).sop_instance_uid


def test_sr_differs_per_study() -> None:
    a, b = sr(), sr(OTHER_STUDY)
    assert a.sop_instance_uid != b.sop_instance_uid


def test_sr_instance_differs_per_engine_version() -> None:
    newer = sr(engines=[("hip_screen", "1.0.1"), ("hipnet", "2.1.0")])
    assert newer.sop_instance_uid != sr().sop_instance_uid
    fewer = sr(engines=[("hip_screen", "1.0.0")])
    assert fewer.sop_instance_uid not in {sr().sop_instance_uid, newer.sop_instance_uid}
    renamed = sr(engines=[("hip_screen2", "1.0.0"), ("hipnet", "2.1.0")])
    assert renamed.sop_instance_uid != sr().sop_instance_uid


def test_sr_instance_differs_per_source_set() -> None:
    gained = sr(sources=[*SOURCES, "1.2.826.0.1.3680043.8.498.2003"])
    lost = sr(sources=SOURCES[:1])
    uids = {sr().sop_instance_uid, gained.sop_instance_uid, lost.sop_instance_uid}
    assert len(uids) == 3


def test_sr_is_independent_of_order() -> None:
    assert sr(engines=ENGINES[::-1], sources=SOURCES[::-1]) == sr()
    assert sr(engines=ENGINES[::-1]) == sr(sources=SOURCES[::-1])


def test_sr_instance_tells_apart_source_sets_that_concatenate_alike() -> None:
    two = sr(sources=["1.2.3.4", "1.2.3.5"])
    one = sr(sources=["1.2.3.41.2.3.5"])
    assert two.sop_instance_uid != one.sop_instance_uid


def test_sc_differs_per_study_engine_version_and_source() -> None:
    base = sc()
    variants = [
        sc(OTHER_STUDY),
        sc(engine=("hip_screen", "1.0.1")),
        sc(engine=("hipnet", "1.0.0")),
        sc(source=SOURCES[1]),
    ]
    uids = {base.sop_instance_uid, *(v.sop_instance_uid for v in variants)}
    assert len(uids) == 1 + len(variants)


def test_a_series_is_one_per_study_kind_and_series_attributes() -> None:
    base = series_uid(STUDY, "sc", "9002", "AI heat maps hip_screen", "", "PELVIS")
    assert base == series_uid(STUDY, "sc", "9002", "AI heat maps hip_screen", "", "PELVIS")
    others = {
        series_uid(OTHER_STUDY, "sc", "9002", "AI heat maps hip_screen", "", "PELVIS"),
        series_uid(STUDY, "sr", "9002", "AI heat maps hip_screen", "", "PELVIS"),
        series_uid(STUDY, "sc", "9002", "AI heat maps hipnet", "", "PELVIS"),
        series_uid(STUDY, "sc", "9002", "AI heat maps hip_screen", "R", "PELVIS"),
        series_uid(STUDY, "sc", "9002", "AI heat maps hip_screen", "", "HIP"),
        series_uid(STUDY, "sc", "9003", "AI heat maps hip_screen", "", "PELVIS"),
        # Joined with a separator: ("ab", "") and ("a", "b") are different series.
        series_uid(STUDY, "sc", "9002", "AI heat maps hip_screen", "PELVIS", ""),
    }
    assert base not in others and len(others) == 7
    assert all(valid(uid) for uid in (base, *others))


def test_sr_and_sc_instances_differ() -> None:
    assert sr().sop_instance_uid != sc().sop_instance_uid


def test_device_uid_is_stable() -> None:
    assert device_uid() == device_uid()
    assert device_uid() not in {sr().sop_instance_uid, sc().sop_instance_uid}
    assert device_uid().startswith("1.2.826.0.1.3680043.8.498.")


def _result(value: str, uid: str = "1.2.3") -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = STUDY
    ds.SOPInstanceUID = uid
    ds.ContentSequence = [Dataset()]
    ds.ContentSequence[0].TextValue = value
    ds.ContentDate = "20261124"  # not content: a rerun's new date keeps the UID
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return ds


def test_content_uid_follows_what_the_object_shows() -> None:
    first = with_content_uid(_result("fracture R"), "sr", SR_CONTENT)
    again = _result("fracture R", uid="9.9")
    again.ContentDate = "20261125"
    with_content_uid(again, "sr", SR_CONTENT)
    changed = with_content_uid(_result("fracture L"), "sr", SR_CONTENT)
    assert first.SOPInstanceUID == again.SOPInstanceUID != changed.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert valid(str(first.SOPInstanceUID))
    # The same content under another kind (an overlay) is another object.
    assert with_content_uid(_result("fracture R"), "sc", SR_CONTENT).SOPInstanceUID != (
        first.SOPInstanceUID
    )


def test_an_overlay_uid_follows_its_pixels() -> None:
    def overlay(pixels: bytes) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID = STUDY
        ds.SOPInstanceUID = "1.2.3"
        ds.PixelData = pixels  # no BitsAllocated: its VR is ambiguous, its bytes are not
        return ds

    a, b = (with_content_uid(overlay(p), "sc", SC_CONTENT) for p in (b"\x00\x01", b"\x00\x02"))
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert with_content_uid(overlay(b"\x00\x01"), "sc", SC_CONTENT).SOPInstanceUID == (
        a.SOPInstanceUID
    )


_ORIGINAL = {"PatientName": "DOE^JANE", "PatientID": "ID-1", "AccessionNumber": "ACC-1"}


@pytest.mark.parametrize("content", [SR_CONTENT, SC_CONTENT])
@pytest.mark.parametrize(
    ("keyword", "corrected"),
    [("PatientName", "CORRECTED^NAME"), ("PatientName", "山田^太郎"), ("PatientID", "ID-2"),
     ("AccessionNumber", "ACC-2")],
)  # fmt: skip
def test_a_corrected_patient_or_study_attribute_is_a_new_object(
    content: tuple[str, ...], keyword: str, corrected: str
) -> None:
    def result(**values: str) -> Dataset:
        ds = _result("fracture R")
        ds.SpecificCharacterSet = "ISO_IR 192"
        for name, value in {**_ORIGINAL, **values}.items():
            setattr(ds, name, value)
        return with_content_uid(ds, "sr", content)

    assert result().SOPInstanceUID == result().SOPInstanceUID
    # Was the same UID: the outbox took the rerun's objects for those already delivered,
    # and the PACS kept the old name, ID or accession.
    assert result(**{keyword: corrected}).SOPInstanceUID != result().SOPInstanceUID


@pytest.mark.parametrize("content", [SR_CONTENT, SC_CONTENT])
def test_a_result_filed_in_another_series_is_a_new_object(content: tuple[str, ...]) -> None:
    def filed_in(series: str) -> Dataset:
        ds = _result("fracture R")
        ds.SeriesInstanceUID = series
        return with_content_uid(ds, "sr", content)

    assert filed_in("1.2.3.9901").SOPInstanceUID == filed_in("1.2.3.9901").SOPInstanceUID
    # Was the same UID: after results.sr_series_number (or sc_) changed, a rerun put the
    # SOP instance the PACS held into a new series.
    assert filed_in("1.2.3.9911").SOPInstanceUID != filed_in("1.2.3.9901").SOPInstanceUID
