"""Recognise the node's own results when a PACS routes them back to it."""

from __future__ import annotations

from dicom_node.identity import MANUFACTURER
from dicom_node.models import Header
from dicom_node.receive.sop_classes import SC_SOP_CLASSES, SR_SOP_CLASSES


def is_own_output(header: Header) -> bool:
    """An SR or SC whose Manufacturer is this node: accept it, never process it."""
    return header.manufacturer == MANUFACTURER and (
        header.sop_class_uid in SR_SOP_CLASSES or header.sop_class_uid in SC_SOP_CLASSES
    )
