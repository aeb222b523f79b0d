"""A real tritonserver for tests: the one nvidia-pytriton bundles (tritonserver 2.51).

``make triton`` (scripts/install-triton.sh) installs it into var/triton-venv. It serves a
model repository on loopback with ephemeral ports (python backend only: ONNX models run
through a python-backend model with onnxruntime) and is always stopped (terminate, then
kill its process group).
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
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRITON_VENV = ROOT / "var" / "triton-venv"
BACKENDS = TRITON_VENV / "triton-backends"
START_SECONDS = 120.0
STOP_SECONDS = 15.0

log = logging.getLogger(__name__)


def tritonserver_binary() -> Path | None:
    found = sorted(
        TRITON_VENV.glob("lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver")
    )
    stub = BACKENDS / "python" / "triton_python_backend_stub"
    return found[0] if found and stub.is_file() else None


def free_ports(count: int) -> list[int]:
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


class TritonUnavailableError(RuntimeError):
    """tritonserver is not installed here."""


@contextmanager
def run_tritonserver(repo: Path, work: Path) -> Iterator[str]:
    """Serve ``repo``; yield the gRPC address. Raises TritonUnavailableError when not installed."""
    server = tritonserver_binary()
    if server is None:
        raise TritonUnavailableError(
            f"tritonserver is not installed in {TRITON_VENV} (run `make triton`, "
            "i.e. scripts/install-triton.sh)"
        )
    grpc_port, http_port, metrics_port = free_ports(3)
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
    work.mkdir(parents=True, exist_ok=True)
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
                raise RuntimeError(
                    f"tritonserver did not become ready (exit code {process.poll()}):\n{tail}"
                )
            time.sleep(0.2)
        log.info("tritonserver ready on grpc %d (log %s)", grpc_port, log_path)
        yield f"127.0.0.1:{grpc_port}"
    finally:
        _stop(process)
