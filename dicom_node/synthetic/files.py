"""Writing synthetic datasets as DICOM Part 10 files."""

from __future__ import annotations

import copy
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_node.errors import FactoryError
from dicom_node.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def write(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a Part 10 file with the node's implementation UID; return the path.

    The file has a preamble and File Meta Information; its transfer syntax is the one
    in ``ds.file_meta`` (see :func:`encode`); an existing file is overwritten.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise FactoryError("write: the dataset has no file_meta Transfer Syntax UID")
    out = copy.copy(ds)
    out.file_meta = copy.deepcopy(meta)
    out.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    out.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    target = Path(path)
    out.save_as(target, enforce_file_format=True)
    return target
