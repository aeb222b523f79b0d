"""A TCP proxy on loopback between a sender and a peer that slows or stalls the sender's
side: a slow link (bytes per second), or a peer that stops reading after some bytes and
keeps the connection open (a hung process whose kernel still holds the socket).

Its threads stop, and its sockets close, when the context ends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def link_proxy(
    target_port: int, rate: float | None = None, stall_after: int | None = None
) -> Iterator[int]:
    """The port of a proxy to ``127.0.0.1:target_port``: what the sender sends goes on at
    ``rate`` bytes per second (None: at once), and stops being read after ``stall_after``
    bytes (None: never)."""
    stop = threading.Event()
    listener = socket.socket()
    # A small receive buffer (inherited by what it accepts): a stalled reader's window
    # closes soon.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    sockets: list[socket.socket] = [listener]
    threads: list[threading.Thread] = []

    def pump(source: socket.socket, sink: socket.socket, limited: bool) -> None:
        moved = 0
        source.settimeout(0.1)
        while not stop.is_set():
            if limited and stall_after is not None and moved >= stall_after:
                stop.wait(0.1)  # read no more: the sender's window closes
                continue
            try:
                data = source.recv(4096 if limited else 65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            with contextlib.suppress(OSError):
                sink.sendall(data)
            moved += len(data)
            if limited and rate:
                time.sleep(len(data) / rate)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peer = socket.create_connection(("127.0.0.1", target_port))
            sockets.extend((client, peer))
            for args in ((client, peer, True), (peer, client, False)):
                thread = threading.Thread(target=pump, args=args, daemon=True)
                threads.append(thread)
                thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join()
        for thread in threads:
            thread.join()
        for sock in sockets:
            sock.close()
