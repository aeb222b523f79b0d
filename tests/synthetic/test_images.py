from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node import identity as node_identity
from dicom_node.errors import FactoryError
from dicom_node.synthetic import (
    CR_IMAGE,
    DX_FOR_PRESENTATION,
    DX_FOR_PROCESSING,
    MANUFACTURER,
    StudyIdentity,
    make_cr,
    make_dx,
    write,
)

DX_CASES = list(
    itertools.product(
        ("AP", "LATERAL"),
        ("L", "R", "B"),
        ("MONOCHROME1", "MONOCHROME2"),
        (10, 12, 16),
        (False, True),
    )
)


@pytest.mark.parametrize(("view", "laterality", "photometric", "bits", "processing"), DX_CASES)
def test_dx_passes_dciodvfy(
    view: str,
    laterality: str,
    photometric: str,
    bits: int,
    processing: bool,
    identity: StudyIdentity,
    image: np.ndarray,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    ds = make_dx(
        image,
        identity=identity,
        view=view,
        laterality=laterality,
        photometric=photometric,
        bits_stored=bits,
        for_processing=processing,
    )
    assert dciodvfy(write(ds, tmp_path / "dx.dcm")) == []


def test_a_non_ascii_identity_is_written_in_utf_8(
    identity: StudyIdentity,
    image: np.ndarray,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    # Was written as Latin-1 bytes with no Specific Character Set: invalid, undeclared.
    german = dataclasses.replace(
        identity,
        patient_name="Müller^Jürgen",
        study_description="Hüfte beidseits",
        referring_physician="Weiß^Änne",
    )
    path = write(make_dx(image, identity=german), tmp_path / "dx.dcm")
    assert dciodvfy(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert (str(ds.PatientName), ds.StudyDescription) == ("Müller^Jürgen", "Hüfte beidseits")
    assert "SpecificCharacterSet" not in make_dx(image, identity=identity)  # ASCII: default


@pytest.mark.parametrize(
    ("view", "laterality", "photometric"),
    list(itertools.product(("AP", "LATERAL"), ("L", "R", "B"), ("MONOCHROME1", "MONOCHROME2"))),
)
def test_cr_passes_dciodvfy(
    view: str,
    laterality: str,
    photometric: str,
    identity: StudyIdentity,
    image: np.ndarray,
    tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    ds = make_cr(
        image, identity=identity, view=view, laterality=laterality, photometric=photometric
    )
    assert dciodvfy(write(ds, tmp_path / "cr.dcm")) == []


def test_dx_carries_the_identity_and_says_it_is_synthetic(
    identity: StudyIdentity, image: np.ndarray
) -> None:
    ds = make_dx(image, identity=identity)
    assert ds.PatientName == identity.patient_name
    assert ds.PatientID == identity.patient_id
    assert ds.PatientBirthDate == identity.birth_date.strftime("%Y%m%d")
    assert ds.PatientSex == identity.sex
    assert ds.PatientAge == identity.patient_age
    assert ds.StudyInstanceUID == identity.study_uid
    assert ds.AccessionNumber == identity.accession_number
    assert ds.StudyDate == identity.study_date.strftime("%Y%m%d")
    assert ds.ReferringPhysicianName == identity.referring_physician
    assert ds.Manufacturer == MANUFACTURER
    assert "synthetic" in ds.Manufacturer
    # The node skips objects whose Manufacturer is its own; phantoms must not look like that.
    assert ds.Manufacturer != node_identity.MANUFACTURER
    assert ds.Modality == "DX"
    assert ds.Rows == 64 and ds.Columns == 64
    assert [float(v) for v in ds.PixelSpacing] == [0.15, 0.15]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize(
    ("laterality", "body_part", "region"),
    [("L", "HIP", "29836001"), ("R", "HIP", "29836001"), ("B", "PELVIS", "816092008")],
)
def test_dx_laterality_and_anatomy(
    laterality: str, body_part: str, region: str, identity: StudyIdentity, image: np.ndarray
) -> None:
    ds = make_dx(image, identity=identity, laterality=laterality)
    assert ds.BodyPartExamined == body_part
    assert ds.AnatomicRegionSequence[0].CodeValue == region
    assert ds.ImageLaterality == laterality
    # DX puts the side in Image Laterality; the series Laterality must then be absent.
    assert "Laterality" not in ds


@pytest.mark.parametrize(
    ("laterality", "body_part", "series_laterality"),
    [("L", "HIP", "L"), ("R", "HIP", "R"), ("B", "PELVIS", None)],
)
def test_cr_laterality_and_anatomy(
    laterality: str,
    body_part: str,
    series_laterality: str | None,
    identity: StudyIdentity,
    image: np.ndarray,
) -> None:
    ds = make_cr(image, identity=identity, laterality=laterality)
    assert ds.SOPClassUID == CR_IMAGE
    assert ds.Modality == "CR"
    assert ds.BodyPartExamined == body_part
    assert ds.get("Laterality") == series_laterality
    assert "ImageLaterality" not in ds
    assert "ViewCodeSequence" not in ds


@pytest.mark.parametrize(
    ("view", "laterality", "position", "code"),
    [
        ("AP", "L", "AP", "399348003"),
        ("AP", "B", "AP", "399348003"),
        ("LATERAL", "R", "RL", "399198007"),
        ("LATERAL", "L", "LL", "399173006"),
        ("LATERAL", "B", "LL", "399173006"),
    ],
)
def test_dx_view_codes(
    view: str,
    laterality: str,
    position: str,
    code: str,
    identity: StudyIdentity,
    image: np.ndarray,
) -> None:
    ds = make_dx(image, identity=identity, view=view, laterality=laterality)
    assert ds.ViewPosition == position
    (item,) = ds.ViewCodeSequence
    assert (item.CodeValue, item.CodingSchemeDesignator) == (code, "SCT")


def test_dx_for_processing_and_for_presentation(identity: StudyIdentity, image: np.ndarray) -> None:
    presentation = make_dx(image, identity=identity)
    processing = make_dx(image, identity=identity, for_processing=True)
    assert presentation.SOPClassUID == DX_FOR_PRESENTATION
    assert presentation.PresentationIntentType == "FOR PRESENTATION"
    assert (presentation.WindowCenter, presentation.WindowWidth) == (2048, 4096)
    assert processing.SOPClassUID == DX_FOR_PROCESSING
    assert processing.PresentationIntentType == "FOR PROCESSING"
    assert "WindowCenter" not in processing


def test_monochrome1_stores_inverted_values(identity: StudyIdentity, image: np.ndarray) -> None:
    mono2 = make_dx(image, identity=identity, bits_stored=12)
    mono1 = make_dx(image, identity=identity, bits_stored=12, photometric="MONOCHROME1")
    assert mono1.PhotometricInterpretation == "MONOCHROME1"
    assert mono1.PresentationLUTShape == "INVERSE"
    assert mono2.PresentationLUTShape == "IDENTITY"
    # PS3.3 C.8.11.3.1.2: +1 when lower values mean less X-ray intensity (bone low, as
    # MONOCHROME1 stores it); MONOCHROME2 stores bone high: -1 (was +1 for both).
    assert (mono1.PixelIntensityRelationshipSign, mono2.PixelIntensityRelationshipSign) == (1, -1)
    np.testing.assert_array_equal(mono1.pixel_array, 4095 - mono2.pixel_array)


def test_integer_pixels_that_fit_are_stored_unchanged(identity: StudyIdentity) -> None:
    pixels = np.arange(64 * 64, dtype=np.int32).reshape(64, 64) % 1000
    ds = make_dx(pixels, identity=identity, bits_stored=10)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 10, 9)
    np.testing.assert_array_equal(ds.pixel_array, pixels)


def test_other_pixels_are_scaled_to_the_full_range(identity: StudyIdentity) -> None:
    floats = np.linspace(-1.0, 1.0, 64 * 64).reshape(64, 64)
    too_large = (np.arange(64 * 64).reshape(64, 64) * 100).astype(np.int64)
    for pixels in (floats, too_large):
        stored = make_dx(pixels, identity=identity, bits_stored=12).pixel_array
        assert (stored.min(), stored.max()) == (0, 4095)
        expected = np.rint((pixels - pixels.min()) * 4095 / np.ptp(pixels))
        np.testing.assert_array_equal(stored, expected)
    constant = make_dx(np.full((8, 8), 3.5), identity=identity).pixel_array
    assert not constant.any()


def test_instance_uids_derive_from_the_series_uid(
    identity: StudyIdentity, image: np.ndarray
) -> None:
    series = "1.2.826.0.1.3680043.8.498.1"
    first = make_dx(image, identity=identity, series_uid=series, instance_number=1)
    again = make_dx(image, identity=identity, series_uid=series, instance_number=1)
    second = make_dx(image, identity=identity, series_uid=series, instance_number=2)
    assert first.SeriesInstanceUID == series
    assert first.SOPInstanceUID == again.SOPInstanceUID != second.SOPInstanceUID
    assert second.InstanceNumber == 2
    other = make_dx(image, identity=identity)
    assert other.SeriesInstanceUID != series


@pytest.mark.parametrize("make", [make_dx, make_cr])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits_stored": 9}, "bits_stored: expected 10-16, got 9"),
        ({"bits_stored": 17}, "bits_stored: expected 10-16, got 17"),
        ({"view": "PA"}, 'view: expected one of .*, got "PA"'),
        ({"laterality": "X"}, 'laterality: expected one of .*, got "X"'),
        ({"photometric": "RGB"}, 'photometric: expected one of .*, got "RGB"'),
        ({"pixel_spacing_mm": (-0.1, 0.1)}, "pixel_spacing_mm: expected two positive spacings"),
        ({"pixel_spacing_mm": (0.1,)}, "pixel_spacing_mm: expected two positive spacings"),
        ({"instance_number": 0}, "instance_number: expected 1-2147483647, got 0"),
        ({"transfer_syntax": "1.2.3.4"}, 'Transfer syntax "1.2.3.4" is not supported'),
    ],
)
def test_invalid_arguments_are_refused(
    make: Callable[..., object],
    kwargs: dict[str, object],
    message: str,
    identity: StudyIdentity,
    image: np.ndarray,
) -> None:
    with pytest.raises(FactoryError, match=message):
        make(image, identity=identity, **kwargs)


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((4, 4, 4)), r"pixels: expected a 2-D array, got shape \(4, 4, 4\)"),
        (np.zeros(16), r"pixels: expected a 2-D array, got shape \(16,\)"),
        (np.zeros((0, 4)), "pixels: expected a non-empty array"),
        (np.full((4, 4), np.nan), "^pixels: expected finite values, found NaN or infinity"),
        (np.full((4, 4), np.inf), "^pixels: expected finite values, found NaN or infinity"),
        (np.zeros((4, 4), dtype=bool), "pixels: expected numeric pixels, got dtype bool"),
        (np.zeros((4, 4), dtype=complex), "pixels: expected real pixels, got dtype complex128"),
        (np.zeros((1, 70000), dtype=np.uint8), "pixels: rows and columns must be at most 65535"),
    ],
)
def test_invalid_pixels_are_refused(
    pixels: np.ndarray, message: str, identity: StudyIdentity
) -> None:
    with pytest.raises(FactoryError, match=message):
        make_dx(pixels, identity=identity)


def test_a_spacing_with_many_digits_is_a_valid_decimal_string(
    identity: StudyIdentity, image: np.ndarray, tmp_path: Path,
    dciodvfy: Callable[[Path], list[str]],
) -> None:  # fmt: skip
    ds = make_dx(image, identity=identity, pixel_spacing_mm=(200 / 96, 200 / 96))
    # Was 2.0833333333333335: 18 characters, over DS's 16 (dciodvfy: length invalid).
    assert all(len(str(v)) <= 16 for v in (*ds.PixelSpacing, *ds.ImagerPixelSpacing))
    assert float(ds.PixelSpacing[0]) == pytest.approx(200 / 96)
    assert dciodvfy(write(ds, tmp_path / "dx.dcm")) == []
