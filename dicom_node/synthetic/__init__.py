"""Synthetic DICOM factory: dciodvfy-clean DX, CR and CT objects from given pixels.

Used by tests, the demo and benchmarks; the image content is the caller's.
"""

from dicom_node.synthetic.ct import AXIAL, CT_IMAGE, make_ct_series
from dicom_node.synthetic.files import write
from dicom_node.synthetic.identity import StudyIdentity
from dicom_node.synthetic.images import (
    CR_IMAGE,
    DX_FOR_PRESENTATION,
    DX_FOR_PROCESSING,
    make_cr,
    make_dx,
)
from dicom_node.synthetic.modules import MANUFACTURER
from dicom_node.synthetic.transfer_syntax import (
    LOSSY_TRANSFER_SYNTAXES,
    TRANSFER_SYNTAXES,
    encode,
)

__all__ = [
    "AXIAL",
    "CR_IMAGE",
    "CT_IMAGE",
    "DX_FOR_PRESENTATION",
    "DX_FOR_PROCESSING",
    "LOSSY_TRANSFER_SYNTAXES",
    "MANUFACTURER",
    "TRANSFER_SYNTAXES",
    "StudyIdentity",
    "encode",
    "make_cr",
    "make_ct_series",
    "make_dx",
    "write",
]
