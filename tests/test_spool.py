from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.errors import SpoolError, SpoolFullError
from dicom_node.spool import Spool


def test_write_is_atomic_and_leaves_no_partial(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    rel = spool.relative_path("1.2.3", "1.2.3.4")
    assert rel == "instances/1.2.3/1.2.3.4.dcm"
    spool.write(rel, [b"abc", memoryview(b"def")])
    assert spool.path(rel).read_bytes() == b"abcdef"
    spool.write(rel, [b"xyz"])  # replaced atomically
    assert spool.path(rel).read_bytes() == b"xyz"
    assert list(spool.tmp.iterdir()) == []
    assert spool.ends_with(rel, b"yz")
    assert not spool.ends_with(rel, b"yy")
    assert not spool.ends_with(rel, b"xyz")  # nothing before it: not a spooled file
    assert not spool.ends_with("instances/none.dcm", b"z")


def test_partials_from_a_crash_are_purged_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    (spool.tmp / "abc.part").write_bytes(b"half")
    Spool(tmp_path, min_free_bytes=0)
    assert list(spool.tmp.iterdir()) == []


def test_disk_guard(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=10**18)
    with pytest.raises(SpoolFullError, match=r"would go below storage\.min_free_bytes"):
        spool.check_space(1)
    Spool(tmp_path, min_free_bytes=0).check_space(1)


def test_unwritable_spool_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpoolError, match=r"storage\.spool_dir: cannot create"):
        Spool(blocker / "spool", min_free_bytes=0)


def test_write_failure_removes_the_partial(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    (spool.instances / "1.2").write_text("a file where the study folder should be")
    with pytest.raises(SpoolError, match=r"cannot write instances/1\.2/1\.2\.3\.dcm"):
        spool.write("instances/1.2/1.2.3.dcm", [b"data"])
    assert list(spool.tmp.iterdir()) == []
