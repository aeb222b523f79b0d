"""Sending results: the durable outbox, its delivery to destinations, and the sender thread."""

from dicom_node.send.outbox import Outbox, backoff_seconds
from dicom_node.send.peers import Delivery, copy_to_folder, send_dicom
from dicom_node.send.sender import Sender

__all__ = ["Delivery", "Outbox", "Sender", "backoff_seconds", "copy_to_folder", "send_dicom"]
