from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from dicom_node.http import HttpEndpoints
from dicom_node.metrics import Metrics


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def endpoints() -> Iterator[Callable[[Callable[[], dict[str, str]]], int]]:
    started: list[HttpEndpoints] = []

    def start(readiness: Callable[[], dict[str, str]]) -> int:
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
    assert get(endpoints(dict), "/nowhere")[0] == 404
