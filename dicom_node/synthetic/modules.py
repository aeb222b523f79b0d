"""DICOM modules every synthetic image shares: patient, study, series, equipment, pixels."""

from __future__ import annotations

from typing import Literal, cast

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node import __version__
from dicom_node.errors import FactoryError
from dicom_node.synthetic.identity import StudyIdentity
from dicom_node.synthetic.pixels import UInt16Array

# Never the node's own Manufacturer ("dicom-node"): the node skips its own output by it.
MANUFACTURER = "dicom-node synthetic factory"
MODEL_NAME = "Hip phantom"
INSTITUTION_NAME = "SYNTHETIC PHANTOM"

Laterality = Literal["L", "R", "B"]
Photometric = Literal["MONOCHROME1", "MONOCHROME2"]

_LATERALITIES = ("L", "R", "B")
_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
# SNOMED CT codes from CID 4009 "DX Anatomy Imaged" / CID 4031 "Common Anatomic Regions",
# matching Body Part Examined per PS3.16 Annex L.
_HIP = ("29836001", "Hip")
_PELVIS = ("816092008", "Pelvis")


def code_item(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    """One item of a code sequence."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def check_laterality(laterality: str) -> Laterality:
    """Raise unless ``laterality`` is L, R or B (both hips, the pelvis)."""
    if laterality in _LATERALITIES:
        return cast(Laterality, laterality)
    raise FactoryError(f'laterality: expected one of {_LATERALITIES}, got "{laterality}"')


def check_photometric(photometric: str) -> Photometric:
    """Raise unless ``photometric`` is MONOCHROME1 or MONOCHROME2."""
    if photometric in _PHOTOMETRICS:
        return cast(Photometric, photometric)
    raise FactoryError(f'photometric: expected one of {_PHOTOMETRICS}, got "{photometric}"')


def check_instance_number(instance_number: int) -> None:
    """Raise unless the Instance Number fits an IS value and is positive."""
    if not 1 <= instance_number <= 2**31 - 1:
        raise FactoryError(f"instance_number: expected 1-2147483647, got {instance_number}")


def ds_number(value: float) -> str:
    """A number as a Decimal String value (at most 16 characters, no negative zero)."""
    text = f"{value:.10g}"
    return "0" if text == "-0" else text


def instance_uid(series_uid: str, index: int) -> str:
    """The SOP Instance UID of instance ``index`` of a series, derived from the series UID."""
    return generate_uid(entropy_srcs=[series_uid, "instance", str(index)])


def new_image(
    identity: StudyIdentity,
    *,
    sop_class_uid: str,
    modality: str,
    series_uid: str | None,
    series_number: int,
    instance_number: int,
) -> Dataset:
    """A dataset with the patient, study, series, equipment and SOP common modules filled.

    The SOP Instance UID is derived from the series UID and ``instance_number``, so
    a caller who gives the series UID gets reproducible instances.
    """
    check_instance_number(instance_number)
    series_uid = series_uid or generate_uid()
    ds = Dataset()
    if not identity.is_ascii:  # a name such as Müller^Jürgen: written as Latin-1, undeclared
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = instance_uid(series_uid, instance_number)
    study_date = identity.study_date.strftime("%Y%m%d")
    study_time = identity.study_time.strftime("%H%M%S")
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = study_time
    # Patient and Patient Study modules.
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date.strftime("%Y%m%d")
    ds.PatientSex = identity.sex
    if identity.patient_age is not None:
        ds.PatientAge = identity.patient_age
    if identity.size_m is not None:
        ds.PatientSize = f"{identity.size_m:.2f}"
    if identity.weight_kg is not None:
        ds.PatientWeight = f"{identity.weight_kg:.1f}"
    # General Study module.
    ds.StudyInstanceUID = identity.study_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.ReferringPhysicianName = identity.referring_physician
    ds.StudyID = identity.study_id
    ds.AccessionNumber = identity.accession_number
    ds.StudyDescription = identity.study_description
    # General Series module.
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = study_date
    ds.SeriesTime = study_time
    # General Equipment module.
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.InstitutionName = INSTITUTION_NAME
    ds.SoftwareVersions = __version__
    # General Image and General Acquisition modules.
    ds.InstanceNumber = instance_number
    ds.ContentDate = study_date
    ds.ContentTime = study_time
    ds.AcquisitionDateTime = study_date + study_time
    ds.BurnedInAnnotation = "NO"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def set_anatomy(ds: Dataset, laterality: Laterality, *, image_laterality: bool) -> None:
    """Body Part Examined, Anatomic Region Sequence and the laterality attributes.

    B (both hips) images the pelvis, an unpaired part: Body Part Examined is PELVIS.
    L and R image one hip (paired): HIP. IODs with Image Laterality (DX) carry the
    side there, including B, and must not carry the series Laterality then; the
    others (CR, CT) carry L/R in the series Laterality and nothing for the pelvis.
    """
    value, meaning = _PELVIS if laterality == "B" else _HIP
    ds.BodyPartExamined = "PELVIS" if laterality == "B" else "HIP"
    ds.AnatomicRegionSequence = Sequence([code_item(value, meaning)])
    if image_laterality:
        ds.ImageLaterality = laterality
    elif laterality != "B":
        ds.Laterality = laterality


def set_pixels(ds: Dataset, stored: UInt16Array, bits_stored: int, photometric: str) -> None:
    """The Image Pixel module for one frame of unsigned native little endian pixels."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
