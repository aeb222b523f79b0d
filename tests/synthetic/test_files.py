from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless

from dicom_node.errors import FactoryError
from dicom_node.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.synthetic import StudyIdentity, make_dx, write


def test_written_file_is_part_10_with_our_implementation(
    identity: StudyIdentity, image: np.ndarray, tmp_path: Path
) -> None:
    ds = make_dx(image, identity=identity, transfer_syntax=JPEGLSLossless)
    path = write(ds, tmp_path / "dx.dcm")
    raw = path.read_bytes()
    assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
    meta = pydicom.dcmread(path).file_meta
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.TransferSyntaxUID == JPEGLSLossless
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # The caller's dataset is left as it was.
    assert "ImplementationClassUID" not in ds.file_meta


def test_write_overwrites_and_accepts_str_paths(
    identity: StudyIdentity, image: np.ndarray, tmp_path: Path
) -> None:
    target = tmp_path / "dx.dcm"
    target.write_bytes(b"stale")
    assert write(make_dx(image, identity=identity), str(target)) == target
    assert pydicom.dcmread(target).PatientID == identity.patient_id


def test_write_needs_a_transfer_syntax(
    identity: StudyIdentity, image: np.ndarray, tmp_path: Path
) -> None:
    bare = pydicom.Dataset(make_dx(image, identity=identity))
    with pytest.raises(FactoryError, match="the dataset has no file_meta Transfer Syntax UID"):
        write(bare, tmp_path / "bare.dcm")
    assert not (tmp_path / "bare.dcm").exists()
