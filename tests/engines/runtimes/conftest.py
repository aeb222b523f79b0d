"""Fixtures for the runtime tests: a packaged hip_screen engine and a real tritonserver.

The server is the one nvidia-pytriton bundles (tritonserver 2.51, python backend only),
installed by ``make triton`` (scripts/install-triton.sh) into var/triton-venv. It serves the
engine through a python-backend model running onnxruntime, on loopback with ephemeral ports,
and is always stopped (terminate, then kill its process group).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.catalog import engine_spec
from engines.models import create
from engines.package import package_engine
from engines.triton_repo import write_triton_repo

ROOT = Path(__file__).resolve().parents[3]
TRITON_VENV = ROOT / "var" / "triton-venv"
BACKENDS = TRITON_VENV / "triton-backends"
START_SECONDS = 120.0
STOP_SECONDS = 15.0

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def hip_screen_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hip_screen engine folder at 64 px (untrained weights: parity needs no training)."""
    folder = tmp_path_factory.mktemp("engines") / "hip_screen"
    package_engine(engine_spec("hip_screen"), create("hip_screen"), 64, folder, "1.2.3-test")
    return folder


def tritonserver_binary() -> Path | None:
    found = sorted(
        TRITON_VENV.glob("lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver")
    )
    stub = BACKENDS / "python" / "triton_python_backend_stub"
    return found[0] if found and stub.is_file() else None


def _free_ports(count: int) -> list[int]:
    # Held open together so the kernel hands out distinct ports; tritonserver binds them
    # right after (a small race other tests on this loopback could only rarely lose).
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (for refused connections)."""
    return _free_ports(1)[0]


def _server_env(server: Path) -> dict[str, str]:
    python = TRITON_VENV / "bin" / "python"
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # libpython for the stub (pyenv keeps it in LIBDIR) and the CUDA runtime stubs the
    # wheel ships; the stub runs the first python on PATH, which must be the triton venv's.
    wheel_libs = server.parents[3] / "nvidia_pytriton.libs"
    library_path = ":".join(
        filter(None, [libdir, str(wheel_libs), os.environ.get("LD_LIBRARY_PATH")])
    )
    return {
        **os.environ,
        "LD_LIBRARY_PATH": library_path,
        "PATH": f"{TRITON_VENV / 'bin'}:{os.environ.get('PATH', '')}",
    }


def _ready(http_port: int) -> bool:
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        # The server's own group (start_new_session): its python-backend stubs go with it.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_SECONDS)


@pytest.fixture(scope="session")
def triton_url(hip_screen_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gRPC address of a running tritonserver that serves ``hip_screen_engine``."""
    server = tritonserver_binary()
    if server is None:
        pytest.skip(
            f"tritonserver is not installed in {TRITON_VENV} (run `make triton`, "
            "i.e. scripts/install-triton.sh)"
        )
    work = tmp_path_factory.mktemp("triton")
    repo = work / "models"
    write_triton_repo([hip_screen_engine], repo, platform="python", max_batch_size=8)
    grpc_port, http_port, metrics_port = _free_ports(3)
    command = [
        str(server),
        f"--model-repository={repo}",
        f"--backend-directory={BACKENDS}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--exit-timeout-secs=5",
    ]
    log_path = work / "tritonserver.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_server_env(server),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _ready(http_port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-4000:]
                pytest.fail(
                    f"tritonserver did not become ready (exit code {process.poll()}):\n{tail}"
                )
            time.sleep(0.2)
        log.info("tritonserver ready on grpc %d (log %s)", grpc_port, log_path)
        yield f"127.0.0.1:{grpc_port}"
    finally:
        _stop(process)
