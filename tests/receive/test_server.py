"""The node's association server: bulk PDU reads, same contract as pynetdicom's socket."""

from __future__ import annotations

import socket
import threading
import tracemalloc
from pathlib import Path

from helpers import config_for
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from dicom_node.node import Node
from dicom_node.receive.server import BulkReadSocket


def test_recv_returns_the_bytes_asked_for_or_what_came_before_the_close() -> None:
    ours, peer = socket.socketpair()
    try:
        reader = BulkReadSocket.__new__(BulkReadSocket)  # the read path only: no association
        reader.socket = ours
        payload = bytes(range(256)) * 4000  # ~1 MB, more than a socket buffer holds

        def send_in_pieces() -> None:
            for start in range(0, len(payload), 70_001):
                peer.sendall(payload[start : start + 70_001])
            peer.sendall(b"tail")
            peer.shutdown(socket.SHUT_WR)  # then the peer closes

        writer = threading.Thread(target=send_in_pieces)
        writer.start()
        first = reader.recv(len(payload))
        assert isinstance(first, bytearray) and first == payload
        assert reader.recv(100) == bytearray(b"tail")  # fewer arrived before the close
        assert reader.recv(6) == bytearray()
        writer.join(5)
    finally:
        ours.close()
        peer.close()


def test_a_declared_length_costs_memory_only_as_its_bytes_arrive() -> None:
    ours, peer = socket.socketpair()
    try:
        reader = BulkReadSocket.__new__(BulkReadSocket)
        reader.socket = ours

        def send() -> None:  # ~3 MB of the 4 GiB a hostile PDU header claims, then close
            peer.sendall(b"x" * 3_000_000)
            peer.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=send)
        tracemalloc.start()
        try:
            writer.start()
            data = reader.recv(2**32 - 1)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            writer.join(5)
        assert data == b"x" * 3_000_000
        assert peak < 16_000_000  # was: a 4 GiB buffer allocated up front
    finally:
        ours.close()
        peer.close()


def test_the_nodes_associations_read_through_it(tmp_path: Path) -> None:
    sockets: list[type] = []
    node = Node(config_for(tmp_path / "spool"))
    node.start()
    try:
        server = node._server  # type: ignore[attr-defined]
        server.bind(evt.EVT_CONN_OPEN, lambda event: sockets.append(type(event.assoc.dul.socket)))
        ae = AE("PACS")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="TRIAGE")
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()
    finally:
        node.stop(drain_seconds=0)
    assert sockets == [BulkReadSocket]
