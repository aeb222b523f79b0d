"""Shared fixtures: an in-process node on an ephemeral loopback port, dcmtk's environment."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import config_for

from dicom_node.node import Node


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Undo what a test's configure_logging did (the CLI tests call main()): its handler
    writes to that test's captured stderr, closed once the test ends."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start nodes (``start_node(node__max_associations=1)``); all are stopped afterwards."""
    nodes: list[Node] = []

    def start(spool: Path | None = None, **dotted: Any) -> Node:
        node = Node(config_for(spool or tmp_path / "spool", **dotted))
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop(drain_seconds=1)


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engines.cache_dir with hip_screen and hipnet packaged at 64 px, untrained.

    The pipeline tests check mechanics (routing, reports, sending), not accuracy: they
    set triage thresholds to make the findings they need present. Seeded, so the
    untrained outputs are the same every run.
    """
    import torch

    from engines.catalog import engine_spec
    from engines.models import create
    from engines.package import package_engine

    cache = tmp_path_factory.mktemp("engine-cache")
    torch.manual_seed(0)
    for name in ("hip_screen", "hipnet"):
        package_engine(engine_spec(name), create(name), 64, cache / name, "0.0.1-test",
                       clinical_use="untrained test engine")  # fmt: skip
    return cache


@pytest.fixture(scope="session")
def fusion_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engines.cache_dir with hip_multimodal and osteoporosis packaged untrained (~40 s)."""
    from fusion_engines import package_fusion_engines

    return package_fusion_engines(tmp_path_factory.mktemp("fusion-cache"))


@pytest.fixture(scope="session")
def all_engines(
    engine_cache: Path, fusion_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An engines.cache_dir with all four test engines (links to the two caches above)."""
    cache = tmp_path_factory.mktemp("all-engines")
    for source in (engine_cache, fusion_cache):
        for folder in source.iterdir():
            (cache / folder.name).symlink_to(folder, target_is_directory=True)
    return cache


@pytest.fixture
def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk tools; skips when dcmtk is not installed."""
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk is not installed (make test installs it)")
    return {**os.environ, "TCP_NODELAY": "1"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` unless TensorRT, pycuda and a CUDA device are present.

    Tests marked ``cuda`` need pycuda and a device but not TensorRT, and skip themselves.
    """
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    # Imported only when gpu tests were collected: the DICOM tests need no engines package.
    from engines.runtimes import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT and pycuda (gpu extra)")
    for item in gpu_items:
        item.add_marker(skip)
