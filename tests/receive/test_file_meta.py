from __future__ import annotations

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from dicom_node.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.receive.file_meta import file_meta


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax", "ae"),
    [
        ("1.2.840.10008.5.1.4.1.1.1", "1.2.3.4", "1.2.840.10008.1.2.1", "PACS"),
        ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.45", "1.2.840.10008.1.2", "ODD_AE"),
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.4.90", "A"),
    ],
)
def test_matches_pydicom(sop_class: str, sop_instance: str, syntax: str, ae: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = ae
    expected = DicomBytesIO()
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert file_meta(sop_class, sop_instance, syntax, ae) == expected.getvalue()
