"""Fixtures of the sending tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.config import AssemblyConfig
from dicom_node.state import State

RULES = AssemblyConfig(quiet_seconds=5, after_release_seconds=1, max_wait_seconds=60)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    """A fresh state database, closed afterwards."""
    st = State(tmp_path / "state.db", RULES)
    try:
        yield st
    finally:
        st.close()
