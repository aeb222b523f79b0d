"""The node's association server: bulk PDU reads, same contract as pynetdicom's socket."""

from __future__ import annotations

import logging
import queue
import socket
import struct
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import CR_STORAGE, config_for, tiny_image
from pydicom.uid import ExplicitVRLittleEndian
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


def _closed_by_the_node(sock: socket.socket, within: float) -> float | None:
    """Seconds until the node closed ``sock`` (EOF or reset), or None within ``within``."""
    sock.settimeout(within)
    start = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def _associated(port: int, abstract_syntax: str, *transfer_syntaxes: str) -> Any:
    """An established association of calling AE PACS with the node at ``port``."""
    ae = AE("PACS")
    if transfer_syntaxes:
        ae.add_requested_context(abstract_syntax, list(transfer_syntaxes))
    else:
        ae.add_requested_context(abstract_syntax)  # pynetdicom's default syntaxes
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established
    return assoc


def _echo(port: int) -> bool:
    ae = AE("PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def test_a_peer_that_stops_mid_pdu_loses_its_slot_after_the_acse_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Three bytes of a PDU header held the one association slot for ever: pynetdicom's
    # timers run in the thread that was blocked in the read.
    node = Node(config_for(tmp_path / "spool", node__acse_timeout_seconds=1,
                           node__max_associations=1))  # fmt: skip
    node.start()
    try:
        with (
            caplog.at_level(logging.INFO),
            socket.create_connection(("127.0.0.1", node.port)) as stalled,
        ):
            stalled.sendall(b"\x01\x00\x00")
            closed = _closed_by_the_node(stalled, 10)
            assert closed is not None and closed < 5
        assert _echo(node.port)  # the slot is free again
    finally:
        node.stop(drain_seconds=0)
    # One WARNING of the node's: pynetdicom's two ERROR lines and traceback are gone.
    assert "connection from 127.0.0.1 closed: a PDU not received whole within 1" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_probe_that_disconnects_frees_its_slot_at_once(tmp_path: Path) -> None:
    # A TCP health probe (connect, close) held the one association slot for the whole
    # node.acse_timeout_seconds: pynetdicom waits that long for a request all the same.
    node = Node(config_for(tmp_path / "spool", node__acse_timeout_seconds=30,
                           node__max_associations=1))  # fmt: skip
    node.start()
    try:
        started = time.monotonic()
        # Nothing, part of a PDU header, a TLS ClientHello's start on this plain port, an
        # HTTP request (the last two were aborted, then held the slot for the timeout).
        # After a release or an abort as its first PDU pynetdicom closed the connection
        # itself, and the slot stayed held: no read saw that close.
        for probe in (
            b"", b"\x01\x00", b"\x16\x03\x01\x02\x00\x01", b"GET / HTTP/1.1\r\n\r\n",
            b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00", b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",
            # Part of a request's body (its header read): held the slot for the timeout.
            b"\x01\x00\x00\x00\x00\xc8" + b"\x00" * 10,
        ):  # fmt: skip
            with socket.create_connection(("127.0.0.1", node.port)) as sock:
                sock.sendall(probe)
                time.sleep(0.1)  # the node reads it (and may close) before the peer leaves
            time.sleep(0.1)
            assert _echo(node.port)  # was: rejected, local limit exceeded
        assert time.monotonic() - started < 10
    finally:
        node.stop(drain_seconds=0)


def test_a_probe_or_a_stranger_is_one_line_naming_the_peer_not_error_tracebacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A load balancer's probe closing with a reset wrote two ERROR lines and a traceback
    # from pynetdicom; an HTTP request or a TLS client on the plain port an ERROR per byte
    # tried as a PDU type; none named the peer.
    node = Node(config_for(tmp_path / "spool", node__max_associations=1))
    node.start()
    try:
        with caplog.at_level(logging.DEBUG):
            with socket.create_connection(("127.0.0.1", node.port)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            for probe in (b"\x16\x03\x01\x02\x00\x01", b"GET /metrics HTTP/1.1\r\n\r\n"):
                with socket.create_connection(("127.0.0.1", node.port)) as sock:
                    sock.sendall(probe)
                    sock.settimeout(5)
                    assert sock.recv(100) == b""  # closed by the node
            time.sleep(0.2)
            assert _echo(node.port)  # the slot is free
    finally:
        node.stop(drain_seconds=0)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith(
        ("pynetdicom.dul", "dicom_node.receive"))]  # fmt: skip
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert (logging.DEBUG, "connection from 127.0.0.1 reset before an association request "
            "(Connection reset by peer)") in lines  # fmt: skip
    warned = [m for level, m in lines if level == logging.WARNING]
    assert warned == [
        "connection from 127.0.0.1 closed: a TLS handshake, and this port does not speak TLS "
        "(node.tls) (first byte 0x16)",
        "connection from 127.0.0.1 closed: an HTTP request (the metrics port is metrics.port) "
        "(first byte 0x47)",
    ]


@pytest.mark.parametrize(
    ("state", "primitive", "queued", "requested", "ends_the_wait"),
    [("Sta2", None, [], False, True), ("Sta1", None, [], False, True),
     # Aborted for an unknown first PDU (a TLS ClientHello on a plain port): was left to
     # wait out the timeout.
     ("Sta13", None, [], False, True),
     # A request already received (or queued): a None at the queue's head would hide a
     # later release or abort from the association's reactor.
     ("Sta3", None, [], False, False), ("Sta2", "rq", [], False, False),
     ("Sta2", None, ["rq"], False, False), ("Sta13", None, [], True, False)],
)  # fmt: skip
def test_only_a_connection_ended_before_its_request_ends_the_wait_for_it(
    state: str, primitive: str | None, queued: list[str], requested: bool, ends_the_wait: bool
) -> None:
    waiting: queue.Queue[str | None] = queue.Queue()
    for item in queued:
        waiting.put(item)
    assoc = SimpleNamespace(
        requestor=SimpleNamespace(primitive=primitive),
        dul=SimpleNamespace(
            state_machine=SimpleNamespace(current_state=state), to_user_queue=waiting
        ),
    )
    socket_ = BulkReadSocket.__new__(BulkReadSocket)  # only the state _ended_before_request reads
    socket_._requested = requested
    socket_._ended_before_request(assoc)
    assert list(waiting.queue) == [*queued, *([None] if ends_the_wait else [])]


def test_a_pdu_longer_than_the_node_receives_closes_the_connection_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Six bytes claiming 4 GiB made the node buffer whatever followed (1.4 GB for 600 MB).
    node = Node(config_for(tmp_path / "spool", node__acse_timeout_seconds=30,
                           node__max_associations=1))  # fmt: skip
    node.start()
    try:
        with (
            caplog.at_level(logging.INFO),
            socket.create_connection(("127.0.0.1", node.port)) as hostile,
        ):
            hostile.sendall(b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 65536)
            closed = _closed_by_the_node(hostile, 10)
        assert closed is not None and closed < 2
        assert "a PDU of 4294967295 bytes announced, over the 1048576 the node receives" in (
            caplog.text
        )
        # Its slot is free at once (was held for acse_timeout: refused before a whole
        # request was read), and the refusal is its WARNING, not pynetdicom's ERROR lines
        # and traceback as well.
        time.sleep(0.1)
        assert _echo(node.port)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    finally:
        node.stop(drain_seconds=0)


def test_a_data_set_far_past_the_instance_limit_is_cut_off_as_it_streams(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The size check answered 0xA700 only once the whole instance was in memory: an endless
    # stream grew the node without bound. One a little over the limit still gets 0xA700.
    node = Node(config_for(tmp_path / "spool", node__max_instance_bytes=1024))
    node.start()
    try:
        assoc = _associated(node.port, CR_STORAGE, ExplicitVRLittleEndian)
        with caplog.at_level(logging.WARNING, logger="dicom_node.receive.server"):
            status = assoc.send_c_store(tiny_image(size=3000))  # 18 MB
        # No answer: the node closed the connection (the peer sees it closed or aborted, in
        # its own thread, a moment later).
        assert "Status" not in status
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not assoc.is_established
        assert "more than 16 MiB over node.max_instance_bytes (1024)" in caplog.text
        assert node.state is not None and node.state.instance_count() == 0
        assert _echo(node.port)
    finally:
        node.stop(drain_seconds=0)


def test_a_peer_trickling_its_request_loses_its_slot_after_the_acse_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The timeout bounded each read, not the PDU: one byte just inside it, again and again,
    # held the slot for as long as the peer liked, and max_associations such peers shut
    # every PACS out (before its AE title is known, so no allow-list helps).
    node = Node(config_for(tmp_path / "spool", node__acse_timeout_seconds=1.5,
                           node__max_associations=1))  # fmt: skip
    node.start()
    stop = threading.Event()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="dicom_node.receive.server"),
            socket.create_connection(("127.0.0.1", node.port)) as trickle,
        ):
            request = b"\x01\x00\x00\x00\x00\xc4" + b"\x00" * 0xC4
            start = time.monotonic()

            def drip() -> None:
                for byte in request:
                    if stop.wait(1.0):
                        return
                    try:
                        trickle.send(bytes([byte]))
                    except OSError:
                        return

            dripper = threading.Thread(target=drip, daemon=True)
            dripper.start()
            while time.monotonic() - start < 10:
                try:
                    if not trickle.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                        break
                except BlockingIOError:
                    time.sleep(0.1)
                except ConnectionResetError:
                    break
            closed = time.monotonic() - start
            stop.set()
        assert closed < 4, closed  # ~1.5 s: the request had not arrived whole
        assert "a PDU not received whole within 1.5 s" in caplog.text
        assert _echo(node.port)  # the slot is free again
    finally:
        stop.set()
        node.stop(drain_seconds=0)


def test_an_endless_command_set_is_cut_off_as_it_streams(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Only data-set fragments were counted: command fragments without their last bit grew
    # the node by everything a peer sent (400 MiB in 1.6 s).
    node = Node(config_for(tmp_path / "spool", node__max_instance_bytes=1024))
    node.start()
    try:
        assoc = _associated(node.port, Verification)
        context = assoc.accepted_contexts[0].context_id
        fragment = b"\x00" * 16000
        item = (len(fragment) + 2).to_bytes(4, "big") + bytes([context, 0x01]) + fragment
        pdu = b"\x04\x00" + len(item).to_bytes(4, "big") + item
        sock = assoc.dul.socket.socket
        assert sock is not None
        with caplog.at_level(logging.WARNING, logger="dicom_node.receive.server"):
            sent = 0
            try:
                for _ in range(64):  # 1 MiB of command fragments, none the last
                    sock.sendall(pdu)
                    sent += len(pdu)
            except OSError:
                pass
            deadline = time.monotonic() + 10
            while "a command set past" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        assert "over the 65536 the node receives" in caplog.text
        assoc.abort()
        assert _echo(node.port)
    finally:
        node.stop(drain_seconds=0)
