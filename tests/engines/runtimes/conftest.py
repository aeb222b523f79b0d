"""Fixtures for the runtime tests: a packaged hip_screen engine and a real tritonserver.

The server is the one nvidia-pytriton bundles (tritonserver 2.51, python backend only),
installed by ``make triton`` (scripts/install-triton.sh) into var/triton-venv. It serves the
engine through a python-backend model running onnxruntime, on loopback with ephemeral ports,
and is always stopped (terminate, then kill its process group).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tritonserver import TritonUnavailableError, free_ports, run_tritonserver

from engines.catalog import engine_spec
from engines.models import create
from engines.package import package_engine
from engines.triton_repo import write_triton_repo


@pytest.fixture(scope="session")
def hip_screen_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hip_screen engine folder at 64 px (untrained weights: parity needs no training)."""
    folder = tmp_path_factory.mktemp("engines") / "hip_screen"
    package_engine(engine_spec("hip_screen"), create("hip_screen"), 64, folder, "1.2.3-test")
    return folder


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (for refused connections)."""
    return free_ports(1)[0]


@pytest.fixture(scope="session")
def triton_url(hip_screen_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gRPC address of a running tritonserver that serves ``hip_screen_engine``."""
    work = tmp_path_factory.mktemp("triton")
    repo = work / "models"
    write_triton_repo([hip_screen_engine], repo, platform="python", max_batch_size=8)
    try:
        with run_tritonserver(repo, work) as url:
            yield url
    except TritonUnavailableError as exc:
        pytest.skip(str(exc))
