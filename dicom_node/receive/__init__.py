"""Receive: the DICOM Storage SCP that spools instances durably before acknowledging them."""

from dicom_node.receive.ae import build_ae, event_handlers
from dicom_node.receive.header import read_header
from dicom_node.receive.store import Receiver

__all__ = ["Receiver", "build_ae", "event_handlers", "read_header"]
