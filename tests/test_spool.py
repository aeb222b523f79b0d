from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node import spool as spool_module
from dicom_node.errors import SpoolError, SpoolFullError
from dicom_node.receive.file_meta import PREAMBLE, file_meta
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
    assert not spool.holds_data_set(rel, b"xyz")  # no File Meta: not a spooled file
    assert not spool.holds_data_set("instances/none.dcm", b"z")


def test_holds_data_set_compares_the_whole_data_set_after_the_file_meta(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    rel = spool.relative_path("1.2.3", "1.2.3.4")
    meta = file_meta("1.2.840.10008.5.1.4.1.1.1", "1.2.3.4", "1.2.840.10008.1.2.1", "PACS")
    spool.write(rel, [PREAMBLE, meta, b"abcdef"])
    assert spool.holds_data_set(rel, b"abcdef")
    assert not spool.holds_data_set(rel, b"def")  # its end only: elements dropped in front
    assert not spool.holds_data_set(rel, b"abcdeg")
    assert not spool.holds_data_set(rel, b"zabcdef")


def test_partials_from_a_crash_are_purged_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    (spool.tmp / "abc.part").write_bytes(b"half")
    Spool(tmp_path, min_free_bytes=0)
    assert list(spool.tmp.iterdir()) == []


def test_disk_guard(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=10**18)
    with (
        pytest.raises(SpoolFullError, match=r"would go below storage\.min_free_bytes"),
        spool.reserve(1),
    ):
        pass
    with Spool(tmp_path, min_free_bytes=0).reserve(1):
        pass


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


def test_out_of_inodes_reads_as_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One small file per instance: a spool can run out of inodes long before bytes, and
    # creating the temporary file is then what fails (ENOSPC).
    spool = Spool(tmp_path, min_free_bytes=0)

    def no_inode(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_inode)
    with pytest.raises(SpoolFullError, match=r"full writing instances/1\.2/1\.2\.3\.dcm"):
        spool.write("instances/1.2/1.2.3.dcm", [b"data"])


def test_unreadable_spool_state_is_a_spool_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)

    def broken(path: object) -> object:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(shutil, "disk_usage", broken)
    with pytest.raises(SpoolError, match=r"free space \(Input/output error\)"), spool.reserve(1):
        pass
    rel = "instances/1.2/1.2.3.dcm"
    spool.write(rel, [b"abc"])
    spool.path(rel).chmod(0)
    if os.access(spool.path(rel), os.R_OK):  # root reads anything: use a folder instead
        spool.path(rel).chmod(0o644)
        spool.path(rel).unlink()
        spool.path(rel).mkdir()
        with pytest.raises(SpoolError, match=r"cannot read instances/1\.2/1\.2\.3\.dcm"):
            spool.holds_data_set(rel, b"ab")
    else:
        with pytest.raises(SpoolError, match=r"cannot read instances/1\.2/1\.2\.3\.dcm"):
            spool.holds_data_set(rel, b"ab")


def test_a_folder_left_by_a_failed_write_gets_its_entry_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    synced: list[Path] = []
    failures = [OSError(errno.EIO, "Input/output error")]  # the first write's parent fsync
    real = spool_module.fsync_dir

    def fsync_dir(path: Path) -> None:
        synced.append(path)
        if path == spool.instances and failures:
            raise failures.pop()
        real(path)

    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)
    with pytest.raises(SpoolError, match="Input/output error"):
        spool.write("instances/1.2/1.2.3.dcm", [b"a"])
    assert (spool.instances / "1.2").is_dir()  # the folder stays, its entry maybe not on disk
    synced.clear()
    spool.write("instances/1.2/1.2.4.dcm", [b"b"])
    assert synced == [spool.instances / "1.2", spool.instances]
    synced.clear()
    spool.write("instances/1.2/1.2.5.dcm", [b"c"])
    assert synced == [spool.instances / "1.2"]  # known durable now: one fsync
    spool.forget_folder("1.2")  # retention removes the folder
    synced.clear()
    spool.write("instances/1.2/1.2.6.dcm", [b"d"])
    assert synced == [spool.instances / "1.2", spool.instances]
    # The study's results folder too: a later episode's results must have their entry synced.
    outputs = spool.root / "outputs"
    spool.write("outputs/1.2/1.2.100.dcm", [b"sr"])
    spool.forget_folder("1.2")
    synced.clear()
    spool.write("outputs/1.2/1.2.101.dcm", [b"sr"])
    assert synced == [outputs / "1.2", outputs]


def test_remove_logs_instead_of_raising(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    (spool.instances / "1.2" / "1.2.3.dcm").mkdir(parents=True)  # unlink fails: a folder
    spool.remove("instances/1.2/1.2.3.dcm")
    assert "could not remove instances/1.2/1.2.3.dcm" in caplog.text
    spool.remove("instances/1.2/absent.dcm")  # absent is fine


def test_a_new_spool_has_its_folders_entries_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(spool_module, "fsync_dir", synced.append)
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    assert synced == [spool.root]
    assert {p.name for p in spool.root.iterdir()} == {"instances", "outputs", "tmp"}


def test_writes_in_progress_count_against_the_free_space_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked alone, two large instances stored at once could both pass and together take
    # the spool below storage.min_free_bytes.
    spool = Spool(tmp_path / "spool", min_free_bytes=1000)
    monkeypatch.setattr(spool, "free_bytes", lambda: 1250)
    with spool.reserve(200):
        with (
            pytest.raises(
                SpoolFullError,
                match=r"^spool has 1250 bytes free \(200 yet to be written\); storing 200 more "
                r"would go below storage\.min_free_bytes \(1000\)$",
            ),
            spool.reserve(200),
        ):
            pass
        with spool.reserve(50):  # what is left
            pass
    with spool.reserve(200):  # the first write is done (its bytes are in free_bytes now)
        pass


def test_what_a_write_has_landed_is_no_longer_held_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write in progress kept its whole size reserved while the file system's free space
    # already counted what it had written: counted twice, an instance that fitted was
    # refused 0xA700. Here a 3 MiB write pauses after its first MiB.
    mib = 1 << 20
    spool = Spool(tmp_path / "spool", min_free_bytes=4 * mib)
    free = [10 * mib]
    monkeypatch.setattr(spool, "free_bytes", lambda: free[0])
    seen: list[int] = []

    def chunks() -> Iterator[bytes]:
        yield b"x" * mib
        free[0] -= mib  # what the file system says once the first MiB is written
        seen.append(free[0])
        # 9 MiB free, 2 MiB of the first write to come: 3 MiB more fits above 4 MiB.
        with spool.reserve(3 * mib):
            pass
        yield b"x" * (2 * mib)

    with spool.reserve(3 * mib) as reservation:
        spool.write("instances/1.2/1.2.3.dcm", chunks(), reservation)
        assert reservation.left == 0
    assert seen == [9 * mib]
    assert (spool.root / "instances/1.2/1.2.3.dcm").stat().st_size == 3 * mib
