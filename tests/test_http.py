from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from http.client import RemoteDisconnected
from pathlib import Path

import pytest
from metric_sources import watched_metrics
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicom_node import http as http_module
from dicom_node.http import HttpEndpoints
from dicom_node.metrics import Metrics


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def endpoints() -> Iterator[Callable[..., int]]:
    started: list[HttpEndpoints] = []

    def start(
        readiness: Callable[[], dict[str, str]], registry: CollectorRegistry | None = None
    ) -> int:
        if registry is None:
            registry = CollectorRegistry()
            Metrics(registry).jobs.labels("done").inc()
        http = HttpEndpoints("127.0.0.1", 0, registry, readiness)
        http.start()
        started.append(http)
        return http.port

    yield start
    for http in started:
        http.stop()


def test_metrics_healthz_and_a_ready_node(endpoints: Callable[..., int]) -> None:
    port = endpoints(dict)
    code, kind, body = get(port, "/metrics")
    assert code == 200 and kind.startswith("text/plain")
    assert 'dicom_node_jobs_total{outcome="done"} 1.0' in body
    assert get(port, "/healthz")[0] == 200
    code, kind, body = get(port, "/readyz")
    assert (code, kind, json.loads(body)) == (
        200,
        "application/json",
        {"ready": True, "not_ready": {}},
    )


def test_readyz_says_what_is_not_ready(endpoints: Callable[..., int]) -> None:
    port = endpoints(lambda: {"destination:pacs": "association rejected"})
    code, _, body = get(port, "/readyz")
    assert code == 503
    assert json.loads(body) == {
        "ready": False,
        "not_ready": {"destination:pacs": "association rejected"},
    }


def test_a_failing_readiness_check_is_not_ready_rather_than_an_error(
    endpoints: Callable[..., int],
) -> None:
    def broken() -> dict[str, str]:
        raise RuntimeError("state database locked")

    code, _, body = get(endpoints(broken), "/readyz")
    assert code == 503 and "state database locked" in body

    def quoting() -> dict[str, str]:  # a library's error quoting what it read
        raise ValueError("invalid literal for int() with base 10: 'DOE'")

    code, _, body = get(endpoints(quoting), "/readyz")
    assert code == 503 and "DOE" not in body
    assert json.loads(body)["not_ready"]["readiness"] == (
        "check failed: ValueError: invalid literal for int() with base 10: '…'"
    )
    assert get(endpoints(dict), "/nowhere")[0] == 404


def test_metrics_are_served_when_scrape_time_sources_fail(
    endpoints: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def counts() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        raise RuntimeError("state database locked")

    def problems() -> dict[str, str]:
        raise RuntimeError("readiness check crashed")

    registry = watched_metrics(tmp_path / "missing", counts, problems, dict).registry
    code, _, body = get(endpoints(dict, registry), "/metrics")
    assert code == 200
    assert 'dicom_node_jobs_total{outcome="done"} 1.0' in body
    assert "dicom_node_spool_free_bytes NaN" in body
    assert "dicom_node_ready 0.0" in body
    assert "dicom_node_studies{" not in body
    assert capsys.readouterr().err == ""


class _Broken(Collector):
    def collect(self) -> Iterable[GaugeMetricFamily]:
        raise RuntimeError("collector bug")


def test_an_unexpected_error_answers_500_and_is_logged(
    endpoints: Callable[..., int],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = CollectorRegistry()
    registry.register(_Broken())
    with caplog.at_level(logging.ERROR, logger="dicom_node.http"):
        code, kind, body = get(endpoints(dict, registry), "/metrics")
    assert (code, kind, body) == (
        500,
        "text/plain; charset=utf-8",
        "internal error in the node; see its log\n",
    )
    assert "GET '/metrics' failed" in caplog.text and "collector bug" in caplog.text
    assert capsys.readouterr().err == ""


def test_an_error_while_answering_is_logged_not_printed(
    endpoints: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def send(*_: object) -> None:
        raise BrokenPipeError("scraper went away")

    monkeypatch.setattr(http_module._Handler, "_send", send)
    port = endpoints(dict)
    with (
        caplog.at_level(logging.WARNING, logger="dicom_node.http"),
        pytest.raises(RemoteDisconnected, match="without response"),
    ):
        get(port, "/healthz")
    assert "error serving" in caplog.text and "scraper went away" in caplog.text
    assert capsys.readouterr().err == ""


def test_head_answers_the_gets_status_and_headers_without_a_body(
    endpoints: Callable[..., int],
) -> None:
    port = endpoints(dict)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as response:  # was: 501
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert response.read() == b""


def test_a_silent_connection_is_closed_after_the_handlers_timeout(
    endpoints: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each connection holds a thread: one that never sends was held for ever.
    assert http_module._Handler.timeout == 10.0
    monkeypatch.setattr(http_module._Handler, "timeout", 0.3)
    port = endpoints(dict)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the node, not by us
        assert time.monotonic() - started < 4
    assert get(port, "/healthz")[0] == 200


def test_a_trickling_connection_is_closed_after_the_handlers_timeout(
    endpoints: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The timeout bounded each read: a byte just inside it, again and again, held the
    # connection's thread for ever.
    monkeypatch.setattr(http_module._Handler, "timeout", 1.0)
    port = endpoints(dict)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as trickle:
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.0\r\n":
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            trickle.settimeout(0.4)
            try:
                if trickle.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed and time.monotonic() - started < 4
    assert get(port, "/healthz")[0] == 200


def test_connections_over_the_limit_are_closed_at_once(
    endpoints: Callable[..., int], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Any number of clients each got a thread.
    monkeypatch.setattr(http_module, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(http_module._Handler, "timeout", 1.5)
    port = endpoints(dict)
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted and handed a thread
        with (
            caplog.at_level(logging.WARNING, logger="dicom_node.http"),
            socket.create_connection(("127.0.0.1", port), timeout=5) as extra,
        ):
            started = time.monotonic()
            assert extra.recv(1) == b""
            assert time.monotonic() - started < 1.0  # not after the handler's timeout
        assert "http: 2 connections open; closing one from" in caplog.text
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the slots come back as the two end
        try:
            if get(port, "/healthz")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    assert get(port, "/healthz")[0] == 200


def test_one_client_cannot_take_every_connection(
    endpoints: Callable[..., int], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # 32 idle connections from one host, reopened as each timed out, held every slot: the
    # liveness probe failed and Kubernetes restarted the node.
    monkeypatch.setattr(http_module, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(http_module, "MAX_PER_CLIENT", 2)
    port = endpoints(dict)
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.3)
        with (
            caplog.at_level(logging.WARNING, logger="dicom_node.http"),
            socket.create_connection(("127.0.0.1", port), timeout=5) as extra,
        ):
            assert extra.recv(1) == b""  # the same host's third: closed at once
        assert "http: 2 connections open from ('127.0.0.1'" in caplog.text
        # Another host (the probe's) is still served.
        with socket.create_connection(
            ("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)
        ) as probe:
            probe.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert probe.recv(64).startswith(b"HTTP/1.0 200")
    finally:
        for sock in held:
            sock.close()


def test_an_ipv6_metrics_host_is_served(endpoints: Callable[..., int]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured on this host")
    http = HttpEndpoints("::1", 0, CollectorRegistry(), dict)  # was: 'cannot resolve'
    http.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{http.port}/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        http.stop()
