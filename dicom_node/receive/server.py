"""The association server, with the TLS handshake moved out of the accept loop and PDUs
read in bulk.

pynetdicom's server wraps each accepted socket in TLS inside its single accept
loop, so one connection that never speaks (a load balancer's TCP probe) blocks
every other TLS peer and the node's shutdown. Here the socket is wrapped
without the handshake, which then happens on the first read in that
connection's own thread, bounded by a socket timeout.

pynetdicom's socket reads a PDU 4096 bytes per ``recv`` call, extending a bytearray each
time: a 15 MB instance costs ~3,700 calls and as many copies in Python. The node's
connections read each PDU into one buffer with ``recv_into`` (same contract: the bytes asked
for, or what arrived before the peer closed); large instances arrive ~16 % faster
(docs/performance.md). The buffer grows with what arrives, not with the length a peer
declares.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer


class DeferredHandshakeServer(ThreadedAssociationServer):
    handshake_timeout: float = 60.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listener = cast(socket.socket, self.socket)  # bound before serve_forever runs
        client, address = listener.accept()
        if self.ssl_context:
            client.settimeout(self.handshake_timeout)
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address


# The most a read allocates before the bytes arrive. ``nr_bytes`` is a PDU length the peer
# declared (any caller, before its AE title is checked): six bytes claiming 4 GiB must not
# cost 4 GiB. Beyond this the buffer doubles as data comes, as pynetdicom's grows.
_PREALLOCATE = 1 << 20


class BulkReadSocket(AssociationSocket):
    """pynetdicom's association socket, reading what a PDU asks for into one buffer."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        data = bytearray(min(nr_bytes, _PREALLOCATE))
        got = 0
        while got < nr_bytes:
            if got == len(data):
                data.extend(bytes(min(len(data), nr_bytes - got)))
            with memoryview(data) as view:
                n = sock.recv_into(view[got:], len(data) - got)
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
        return assoc


def start_server(
    ae: AE, address: tuple[str, int], handlers: list[Any], ssl_context: Any, timeout: float
) -> ThreadedAssociationServer:
    """Start serving in a daemon thread, like ``AE.start_server(block=False)``."""
    server = cast(DeferredHandshakeServer, ae.make_server(
        address, evt_handlers=handlers, ssl_context=ssl_context,
        server_class=DeferredHandshakeServer, request_handler=BulkReadHandler,
    ))  # fmt: skip
    server.handshake_timeout = timeout
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    ae._servers.append(server)  # so that AE.shutdown() and server.shutdown() find it
    return server
