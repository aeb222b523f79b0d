"""A pynetdicom Storage SCP on loopback for the sending tests: it answers a chosen status and
records what it received."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

SR = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture


@dataclass
class Peer:
    """A running Storage SCP and what it received: (calling AE, SOP class, SOP instance)."""

    port: int
    status: int
    script: list[int] = field(default_factory=list)  # statuses for the next stores, in turn
    received: list[tuple[str, str, str]] = field(default_factory=list)
    associations: int = 0


@contextmanager
def storage_scp(
    status: int = 0x0000,
    ae_title: str = "PACS",
    port: int = 0,
    require_called_aet: bool = False,
    contexts: tuple[str, ...] = (SR, SC),
    delay: float = 0.0,
    abort: bool = False,
) -> Iterator[Peer]:
    """``abort``: record each store, then abort its association instead of answering (a
    PACS restarting, or out of storage)."""
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = require_called_aet
    for sop_class in contexts:
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    peer = Peer(port=port, status=status)

    def on_store(event: Any) -> int:
        if delay:
            time.sleep(delay)
        ds = event.dataset
        peer.received.append(
            (event.assoc.requestor.ae_title, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        )
        if abort:
            event.assoc.abort()
        return peer.script.pop(0) if peer.script else peer.status

    def on_accepted(event: Any) -> None:
        peer.associations += 1

    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_ACCEPTED, on_accepted)],
    )
    assert server is not None  # block=False returns the running server
    try:
        peer.port = server.server_address[1]
        yield peer
    finally:
        server.shutdown()
