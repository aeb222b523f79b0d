"""The pynetdicom Application Entity: contexts, access control and event bindings."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE, evt

from dicom_node.config import NodeConfig
from dicom_node.identity import name_the_node
from dicom_node.receive.sop_classes import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, UNCOMPRESSED
from dicom_node.receive.store import (
    Receiver,
    handle_accepted,
    handle_echo,
    handle_ended,
    handle_rejected,
    handle_store,
)

VERIFICATION = "1.2.840.10008.1.1"


def build_ae(node: NodeConfig) -> AE:
    """An AE that accepts Verification and the storage classes in every listed syntax."""
    ae = AE(ae_title=node.ae_title)
    name_the_node(ae)
    ae.add_supported_context(VERIFICATION, UNCOMPRESSED[:2])  # explicit, implicit LE
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    # An empty list means any calling AE; pynetdicom rejects others with
    # "calling AE title not recognised" (PS3.8 A-ASSOCIATE-RJ reason 3).
    ae.require_calling_aet = list(node.allowed_calling_aes)
    # Reject with "called AE title not recognised" (reason 7) when it is not ours.
    ae.require_called_aet = node.require_called_ae
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = node.max_pdu
    ae.network_timeout = node.network_timeout_seconds
    # Also the ARTIM timer: how long a connection may stay open without an
    # A-ASSOCIATE-RQ (e.g. a load balancer's TCP probe) before it is dropped.
    ae.acse_timeout = node.acse_timeout_seconds
    ae.dimse_timeout = node.network_timeout_seconds
    return ae


def event_handlers(receiver: Receiver) -> list[Any]:
    """The handlers the server binds, each with its explicit dependency."""
    return [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [receiver]),
        (evt.EVT_ACCEPTED, handle_accepted, [receiver]),
        (evt.EVT_RELEASED, handle_ended, [receiver]),
        (evt.EVT_ABORTED, handle_ended, [receiver]),
        (evt.EVT_CONN_CLOSE, handle_ended, [receiver]),
        (evt.EVT_REJECTED, handle_rejected, [receiver]),
    ]
