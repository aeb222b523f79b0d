from __future__ import annotations

from dicom_node.assemble.timing import deadline
from dicom_node.config import AssemblyConfig

RULES = AssemblyConfig(quiet_seconds=5, after_release_seconds=1, max_wait_seconds=60)


def test_quiet_period_while_an_association_is_open() -> None:
    d = deadline(100, 110, open_associations=1, released_at=None, rules=RULES)
    assert (d.due_at, d.reason) == (115, "quiet")


def test_release_shortens_the_wait() -> None:
    d = deadline(100, 110, open_associations=0, released_at=110.5, rules=RULES)
    assert (d.due_at, d.reason) == (111.5, "released")


def test_release_is_ignored_while_another_association_carries_the_study() -> None:
    d = deadline(100, 110, open_associations=1, released_at=110.5, rules=RULES)
    assert d.reason == "quiet"


def test_max_wait_caps_a_trickling_study() -> None:
    d = deadline(100, 158, open_associations=1, released_at=None, rules=RULES)
    assert (d.due_at, d.reason) == (160, "max_wait")
