"""The association server, with the TLS handshake moved out of the accept loop and PDUs
read in bulk.

pynetdicom's server wraps each accepted socket in TLS inside its single accept
loop, so one connection that never speaks (a load balancer's TCP probe) blocks
every other TLS peer and the node's shutdown. Here the socket is wrapped
without the handshake, which then happens on the first read in that
connection's own thread, bounded like any read before the association by
``node.acse_timeout_seconds`` (:class:`BulkReadSocket`).

pynetdicom's socket reads a PDU 4096 bytes per ``recv`` call, extending a bytearray each
time: a 15 MB instance costs ~3,700 calls and as many copies in Python. The node's
connections read each PDU into one buffer with ``recv_into`` (same contract: the bytes asked
for, or what arrived before the peer closed); large instances arrive ~16 % faster
(docs/performance.md). The buffer grows with what arrives, not with the length a peer
declares.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger(__name__)


class DeferredHandshakeServer(ThreadedAssociationServer):
    max_instance_bytes: int = 0  # what BulkReadSocket lets one data set grow to (+16 MiB)
    # Told id(association) when a DIMSE data set begins to arrive (Receiver.data_arriving).
    on_data: Callable[[int], None] | None = None
    # Told when a TLS handshake is refused (Receiver.tls_refused: counted as a rejection).
    on_tls_refused: Callable[[], None] | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listener = cast(socket.socket, self.socket)  # bound before serve_forever runs
        client, address = listener.accept()
        # A peer that vanished without a FIN (a PACS rebooted, a firewall dropping the
        # connection's state) is found by the kernel, not left half-open for ever.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address


# The most a read allocates before the bytes arrive. ``nr_bytes`` is a PDU length the peer
# declared (any caller, before its AE title is checked): six bytes claiming 4 GiB must not
# cost 4 GiB. Beyond this the buffer doubles as data comes, as pynetdicom's grows.
_PREALLOCATE = 1 << 20


# The longest PDU a peer may send before its association is established (an A-ASSOCIATE-RQ
# is a few kilobytes), and a release or an abort at any time.
_CONTROL_PDU_LIMIT = 1 << 20
_P_DATA_TF = 0x04
# How far past node.max_instance_bytes a data set may run and still be answered 0xA700 by
# the store handler; further, the connection is closed as it streams.
_OVERSIZE_GRACE = 16 << 20
# The longest DIMSE command set a peer may send (a C-STORE-RQ's is ~200 bytes): its
# fragments were not counted, and an endless stream of them grew the node without bound.
_COMMAND_LIMIT = 64 << 10
# PS3.8 states of an acceptor before an A-ASSOCIATE-RQ: idle, transport connection open;
# and awaiting the close after it aborted a connection whose first PDU was not one it
# knows (AA-1 from Sta2: a TLS ClientHello on a plain port, an HTTP probe), where no
# request was read (BulkReadSocket._requested).
_BEFORE_REQUEST = frozenset({"Sta1", "Sta2", "Sta13"})
_A_ASSOCIATE_RQ = 0x01
_PDU_TYPES = frozenset(range(0x01, 0x08))  # PS3.8 9.3: A-ASSOCIATE-RQ to A-ABORT
_NOT_DICOM = {
    0x16: "a TLS handshake, and this port does not speak TLS (node.tls)",
    **dict.fromkeys(b"GPHDOC", "an HTTP request (the metrics port is metrics.port)"),
}


class _RefusedError(ConnectionAbortedError):
    """The node closes the connection (a bound overrun, a timeout); it has said why."""


class _QuietClose(logging.Filter):
    """Drops pynetdicom's "PDU is shorter than expected" ERROR for a body the node itself
    ended (a refusal it has logged as a WARNING): the DUL thread logs it right after the
    read returns, and a thread-local mark says the read was ours."""

    marked = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            getattr(self.marked, "closing", False)
            and isinstance(record.msg, str)
            and record.msg.startswith("The received PDU is shorter than expected")
        ):
            self.marked.closing = False
            return False
        return True


_QUIET = _QuietClose()
logging.getLogger("pynetdicom.dul").addFilter(_QUIET)


def _peer(assoc: Any) -> str:
    """The peer's address, as the node's refusals name it."""
    return str(getattr(assoc.requestor, "address", "?"))


class BulkReadSocket(AssociationSocket):
    """pynetdicom's association socket, reading what a PDU asks for into one buffer, and
    bounding what a peer may make the node hold or wait for:

    - each PDU, header and body, must arrive within ``acse_timeout`` before the association
      is established (a peer that sent three bytes, or half a TLS handshake, held its
      association slot for ever: pynetdicom's timers run in the thread blocked in the
      read) and ``network_timeout`` after (a connection half-open mid-PDU leaked its
      thread). The time is the PDU's, not each read's: one byte just inside each timeout
      held a slot for as long as the peer liked;
    - a PDU longer than the node receives (``node.max_pdu`` for P-DATA, 1 MiB for others)
      closes the connection before its body is read (six bytes claiming 4 GiB made the node
      buffer whatever followed);
    - a DIMSE data set more than 16 MiB past ``node.max_instance_bytes`` closes it
      mid-stream (the store handler's size check, which answers 0xA700, runs only once
      the whole instance is in memory: an endless stream grew the node without bound),
      and so does a command set over 64 KiB.

    pynetdicom reads a PDU as ``recv(6)`` (its header) then ``recv(length)``; a read that
    raises OSError is a closed connection to it (Evt17).
    """

    max_instance_bytes = 0  # set by BulkReadHandler from node.max_instance_bytes; 0: none
    on_data: Callable[[int], None] | None = None  # set by BulkReadHandler (the server's)
    on_tls_refused: Callable[[], None] | None = None  # likewise
    _header: bytes | None = None  # the last PDU header read, its body not yet read
    _message_bytes = 0  # data-set bytes of the DIMSE message being received
    _command_bytes = 0  # command-set bytes of the DIMSE message being received
    _deadline: float | None = None  # when the PDU being read must be in
    _timeout: float | None = None  # the seconds that deadline allows
    _requested = False  # has a whole A-ASSOCIATE-RQ been read on this connection?
    _stranger = False  # did the connection begin with something other than a PDU?

    def recv(self, nr_bytes: int) -> bytearray:
        if self._stranger:  # read on while pynetdicom closes: what follows is not read
            return bytearray()
        assoc = getattr(self, "_assoc", None)
        header, self._header = self._header, None
        if assoc is not None and header is None:  # a PDU starts: header and body in one timeout
            timeout = assoc.network_timeout if assoc.is_established else assoc.acse_timeout
            self._timeout = timeout
            self._deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if assoc is not None and header is not None:  # refused as any other read would be
                self._check_length(assoc, assoc.is_established, header[0], nr_bytes)
            data = self._read(nr_bytes, assoc)
        except ssl.SSLError as exc:
            if assoc is None or assoc.is_established:
                raise
            # A refused handshake (no client certificate, another CA, an expired one, plain
            # TCP on the TLS port): one line naming the peer, then a quiet close. pynetdicom
            # logged the error as "Connection closed before the entire PDU was received"
            # with a traceback, and no line said which modality it was.
            log.warning("TLS handshake from %s failed: %s", _peer(assoc),
                        " ".join(str(exc).split()))  # fmt: skip
            if self.on_tls_refused is not None:  # else no metric showed the refusals
                self.on_tls_refused()
            self._ended_before_request(assoc)
            return bytearray()
        except _RefusedError:
            if assoc is None or assoc.is_established:
                raise
            # Refused before the association (a request stalled, trickled or too long, a
            # handshake left half done), with its own WARNING: then a quiet close, not
            # pynetdicom's two ERROR lines and a traceback.
            _QUIET.marked.closing = header is not None  # a body cut short: it says so
            self._stranger = True
            self._ended_before_request(assoc)
            return bytearray()
        except ConnectionResetError as exc:
            if assoc is None or assoc.is_established or self._requested:
                self._ended_before_request(assoc)
                raise
            # Gone before its request (a load balancer's probe closes with a reset): as
            # routine as a close. pynetdicom logged two ERROR lines and a traceback each time.
            log.debug("connection from %s reset before an association request (%s)",
                      _peer(assoc), exc.strerror or exc)  # fmt: skip
            self._ended_before_request(assoc)
            return bytearray()
        except OSError:  # a bound overrun
            self._ended_before_request(assoc)
            raise
        if len(data) < nr_bytes:  # the peer closed
            self._ended_before_request(assoc)
        if header is None and nr_bytes == 6 and len(data) == 6:
            if assoc is not None and not self._requested and data[0] not in _PDU_TYPES:
                return self._not_dicom(assoc, data[0])
            self._header = bytes(data)  # the next read is its body
        elif header is not None and header[0] == _A_ASSOCIATE_RQ and len(data) == nr_bytes:
            # A whole request: only then can one reach the association (a peer gone inside
            # its request, or refused for one too long, held its slot for acse_timeout).
            self._requested = True
        elif header is not None and header[0] == _P_DATA_TF and assoc is not None:
            self._count(assoc, data)
        return data

    def _not_dicom(self, assoc: Any, first: int) -> bytearray:
        """A connection whose first bytes are no PDU (a TLS client on the plain port, an
        HTTP request): one line naming the peer, then a close. pynetdicom logged an ERROR
        per byte it tried as a PDU type, naming no one."""
        what = _NOT_DICOM.get(first, "not a DICOM association request")
        log.warning("connection from %s closed: %s (first byte 0x%02X)",
                    _peer(assoc), what, first)  # fmt: skip
        self._stranger = True
        self._ended_before_request(assoc)
        return bytearray()  # read as the peer's close

    def _ended_before_request(self, assoc: Any) -> None:
        """The connection ended before its A-ASSOCIATE-RQ (a TCP probe, a plain-TCP peer
        of a TLS node, a TLS or HTTP peer of a plain one): pynetdicom's association thread
        waits ``acse_timeout`` for the request all the same, holding an association slot
        after the peer has gone. An empty primitive ends that wait now, as its timeout
        would.

        Only while no request was read (Sta1/Sta2, or Sta13 after an unknown first PDU;
        this runs in the DUL thread, the only one that moves the state machine, and reads
        every PDU): after one, a None left at the head of the queue would hide a later
        release or abort from the association's reactor."""
        if assoc is None or self._requested or assoc.requestor.primitive is not None:
            return
        if assoc.dul.state_machine.current_state not in _BEFORE_REQUEST:
            return
        waiting = assoc.dul.to_user_queue
        if waiting.empty():
            waiting.put(None)

    def _check_length(self, assoc: Any, established: bool, pdu_type: int, length: int) -> None:
        limit = _CONTROL_PDU_LIMIT
        if established and pdu_type == _P_DATA_TF:
            most = int(assoc.acceptor.maximum_length or 0)  # 0: the node set no limit
            limit = most + 6 if most else 2**32  # the largest PDV item, its header too
        if length > limit:
            self._refuse(assoc, f"a PDU of {length} bytes announced, over the {limit} the "
                         "node receives (node.max_pdu)")  # fmt: skip

    def _count(self, assoc: Any, body: bytearray) -> None:
        """Add the P-DATA body's data-set fragments to the message being received."""
        at = 0
        while at + 6 <= len(body):
            length = int.from_bytes(body[at : at + 4], "big")
            control = body[at + 5]
            if control & 0x01:  # a command fragment (bit 0 clear: a data set's)
                self._command_bytes += max(0, length - 2)
                if self._command_bytes > _COMMAND_LIMIT:
                    self._refuse(assoc, f"a command set past {self._command_bytes} bytes, "
                                 f"over the {_COMMAND_LIMIT} the node receives")  # fmt: skip
                if control & 0x02:  # its last fragment: the next message starts at 0
                    self._command_bytes = 0
            else:
                if self._message_bytes == 0 and self.on_data is not None:
                    self.on_data(id(assoc))  # a data set begins: its study may be arriving
                self._message_bytes += max(0, length - 2)
                limit = self.max_instance_bytes + _OVERSIZE_GRACE
                if self.max_instance_bytes and self._message_bytes > limit:
                    self._refuse(assoc, f"a data set past {self._message_bytes} bytes, more "
                                 f"than 16 MiB over node.max_instance_bytes "
                                 f"({self.max_instance_bytes})")  # fmt: skip
                if control & 0x02:
                    self._message_bytes = 0
            at += 4 + length

    def _refuse(self, assoc: Any, why: str) -> None:
        log.warning("connection from %s closed: %s", _peer(assoc), why)
        raise _RefusedError(why)

    def _late(self) -> str:
        """Why a read ran out of time: a TLS handshake still under way (read as the first
        PDU's), or a PDU."""
        sock = self.socket
        if isinstance(sock, ssl.SSLSocket) and sock.version() is None:
            return f"TLS handshake not completed within {self._timeout} s"
        return f"a PDU not received whole within {self._timeout} s"

    def close(self) -> None:
        # pynetdicom closes the connection itself after a first PDU it aborts on (a release,
        # an abort, P-DATA before any request): no read sees that close, so the wait for
        # the request was not ended, and the slot stayed held for acse_timeout.
        self._ended_before_request(getattr(self, "_assoc", None))
        super().close()

    def _read(self, nr_bytes: int, assoc: Any) -> bytearray:
        sock = cast(socket.socket, self.socket)
        data = bytearray(min(nr_bytes, _PREALLOCATE))
        got = 0
        while got < nr_bytes:
            if got == len(data):
                data.extend(bytes(min(len(data), nr_bytes - got)))
            if assoc is not None:
                left = None if self._deadline is None else self._deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._refuse(assoc, self._late())
                sock.settimeout(left)
            try:
                with memoryview(data) as view:
                    n = sock.recv_into(view[got:], len(data) - got)
            except TimeoutError:
                if assoc is None:
                    raise
                self._refuse(assoc, self._late())
            if not n:  # the peer closed: what arrived, as pynetdicom's recv returns
                break
            got += n
        return data if got == nr_bytes else data[:got]


class BulkReadHandler(RequestHandler):
    """pynetdicom's request handler, giving each association a :class:`BulkReadSocket`."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # The same socket object, reading in bulk: a new one would announce the connection
        # to the state machine a second time (AssociationSocket.__init__ queues Evt5).
        cast(Any, assoc.dul.socket).__class__ = BulkReadSocket
        limit = getattr(self.server, "max_instance_bytes", 0)
        cast(Any, assoc.dul.socket).max_instance_bytes = limit
        cast(Any, assoc.dul.socket).on_data = getattr(self.server, "on_data", None)
        cast(Any, assoc.dul.socket).on_tls_refused = getattr(self.server, "on_tls_refused", None)
        return assoc


def start_server(
    ae: AE,
    address: tuple[str, int],
    handlers: list[Any],
    ssl_context: Any,
    max_instance_bytes: int = 0,
    on_data: Callable[[int], None] | None = None,
    on_tls_refused: Callable[[], None] | None = None,
) -> ThreadedAssociationServer:
    """Start serving in a daemon thread, like ``AE.start_server(block=False)``; ``on_data``
    is told id(association) when a DIMSE data set begins to arrive on it, and
    ``on_tls_refused`` when a TLS handshake is refused."""
    server = cast(DeferredHandshakeServer, ae.make_server(
        address, evt_handlers=handlers, ssl_context=ssl_context,
        server_class=DeferredHandshakeServer, request_handler=BulkReadHandler,
    ))  # fmt: skip
    server.max_instance_bytes = max_instance_bytes
    server.on_data = on_data
    server.on_tls_refused = on_tls_refused
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    ae._servers.append(server)  # so that AE.shutdown() and server.shutdown() find it
    return server
