"""Shared fixtures: an in-process node on an ephemeral loopback port, dcmtk's environment."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import config_for

from dicom_node.node import Node


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


@pytest.fixture
def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk tools; skips when dcmtk is not installed."""
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk is not installed (make test installs it)")
    return {**os.environ, "TCP_NODELAY": "1"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` unless TensorRT, pycuda and a CUDA device are present."""
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
