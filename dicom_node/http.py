"""The node's HTTP endpoints on ``metrics.host:metrics.port``.

- ``/metrics``: Prometheus text format.
- ``/healthz``: 200 while the process serves (liveness).
- ``/readyz``: 200 when the engines are loaded, the spool is writable and every
  destination answered recently; else 503. The JSON body says what is not ready.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dicom_node.errors import describe

log = logging.getLogger(__name__)

Readiness = Callable[[], dict[str, str]]  # problem name -> why; empty when ready

_INTERNAL_ERROR = b"internal error in the node; see its log\n"


def _json(code: int, body: object) -> tuple[int, str, bytes]:
    return code, "application/json", json.dumps(body, sort_keys=True).encode() + b"\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Seconds a connection may last, its request and the answer: the server runs a thread
    # per connection, and clients that connect and send nothing (or vanish without a FIN),
    # or trickle a byte just inside each read's timeout, would otherwise hold theirs for
    # ever, in the process that needs threads for DICOM associations.
    timeout = 10.0

    def setup(self) -> None:
        super().setup()
        # socketserver's timeout bounds each read; this bounds the whole connection.
        self._expiry = threading.Timer(self.timeout, self._expire)
        self._expiry.daemon = True
        self._expiry.start()

    def _expire(self) -> None:
        with contextlib.suppress(OSError):  # already closed
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._expiry.cancel()
        super().finish()

    def do_GET(self) -> None:
        self._reply(head=False)

    def do_HEAD(self) -> None:  # uptime checkers: the GET's status and headers, no body
        self._reply(head=True)

    def _reply(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            code, content_type, body = self._answer(path)
        except Exception:  # the boundary: a bug answers 500, it never drops the connection
            log.exception("http: %s %r failed", self.command, path)
            code, content_type, body = 500, "text/plain; charset=utf-8", _INTERNAL_ERROR
        self._send(code, content_type, body, head)

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry)
        if path == "/healthz":
            return _json(200, {"status": "alive"})
        if path == "/readyz":
            try:
                problems = self.server.readiness()
            except Exception as exc:  # a broken check is "not ready", never a crash
                log.exception("readiness check failed")
                problems = {"readiness": f"check failed: {describe(exc)}"}
            return _json(503 if problems else 200, {"ready": not problems, "not_ready": problems})
        return _json(404, {"error": f"no such endpoint: {path}"})

    def _send(self, code: int, content_type: str, body: bytes, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s %s", self.address_string(), format % args)


# Connections served at once (Prometheus, probes and a few people need a handful); more
# are closed at once rather than each given a thread.
MAX_CONNECTIONS = 32
# Of those, the most one client address may hold: 32 idle connections from one host,
# reopened as each timed out, kept every slot and failed the liveness probe (a restart).
MAX_PER_CLIENT = 8


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, readiness: Readiness
    ) -> None:
        # metrics.host may be an IPv6 address (as node.host may): the socket must be too.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.registry = registry
        self.readiness = readiness
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._per_client: Counter[str] = Counter()
        self._lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        with self._lock:
            crowded = self._per_client[client] >= MAX_PER_CLIENT
            if not crowded:
                self._per_client[client] += 1
        if crowded:
            log.warning("http: %d connections open from %s; closing one",
                        MAX_PER_CLIENT, client_address)  # fmt: skip
            self.shutdown_request(request)
            return
        if not self._slots.acquire(blocking=False):
            log.warning("http: %d connections open; closing one from %s",
                        MAX_CONNECTIONS, client_address)  # fmt: skip
            self._leave(client)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            self._leave(client)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
            self._leave(str(client_address[0]))

    def _leave(self, client: str) -> None:
        with self._lock:
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver's default prints the traceback to stderr (e.g. a scraper that left).
        log.warning("http: error serving %s", client_address, exc_info=True)


class HttpEndpoints:
    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, readiness: Readiness
    ) -> None:
        self._server = _Server((host, port), registry, readiness)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
