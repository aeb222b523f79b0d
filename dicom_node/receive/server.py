"""The association server, with the TLS handshake moved out of the accept loop.

pynetdicom's server wraps each accepted socket in TLS inside its single accept
loop, so one connection that never speaks (a load balancer's TCP probe) blocks
every other TLS peer and the node's shutdown. Here the socket is wrapped
without the handshake, which then happens on the first read in that
connection's own thread, bounded by a socket timeout.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer


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


def start_server(
    ae: AE, address: tuple[str, int], handlers: list[Any], ssl_context: Any, timeout: float
) -> ThreadedAssociationServer:
    """Start serving in a daemon thread, like ``AE.start_server(block=False)``."""
    server = cast(DeferredHandshakeServer, ae.make_server(
        address, evt_handlers=handlers, ssl_context=ssl_context,
        server_class=DeferredHandshakeServer,
    ))  # fmt: skip
    server.handshake_timeout = timeout
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    ae._servers.append(server)  # so that AE.shutdown() and server.shutdown() find it
    return server
