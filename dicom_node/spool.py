"""The durable spool: encoded instances on disk, written before they are acknowledged.

Layout under ``storage.spool_dir``::

    instances/<Study Instance UID>/<SOP Instance UID>.dcm   one file per instance
    outputs/<Study Instance UID>/<SOP Instance UID>.dcm     the node's results (pipeline)
    tmp/                                                  partial writes, emptied at start-up
    state.sqlite3                                         the index (see state.py)
    node.lock                                             held by the node serving it

A serving node holds an exclusive lock on ``node.lock`` (``Spool(..., exclusive=True)``):
a second node on the same spool emptied the first's ``tmp/`` under its writes and ran its
jobs again; it is refused at start, naming the first's process id.

A write goes to ``tmp/``, is fsync'd, renamed atomically into place and the
directory is fsync'd, so after a crash a file is either whole or absent. UIDs
are checked against the UID grammar before they become path components.

Whoever writes and indexes a study's instance, or removes the study's files
(dicom_node/retention.py), holds that study's lock (``study_lock``), so a purge can
never remove an instance that is being acknowledged.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dicom_node.errors import SpoolError, SpoolFullError

log = logging.getLogger(__name__)

# A spooled file: 128-byte preamble, "DICM", then (0002,0000) UL 4 <group length>.
_GROUP_LENGTH_ELEMENT = b"DICM\x02\x00\x00\x00UL\x04\x00"
_META_HEAD = 144  # up to the end of the group length's value, where the rest of group 2 begins
_LOCK_STRIPES = 64  # studies share a lock only when their UIDs hash alike
_DURABLE_FOLDERS_KEPT = 100_000
_WRITE_SLICE = 1 << 20  # bytes written between two updates of the space reservation


LOCK_NAME = "node.lock"


class Spool:
    def __init__(self, root: Path, min_free_bytes: int, exclusive: bool = False) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.instances = root / "instances"
        self.outputs = root / "outputs"
        self.tmp = root / "tmp"
        self._study_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._instance_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._space_lock = threading.Lock()
        self._reserved = 0  # bytes that writes in progress have checked for, not yet written
        # Study folders whose entry in instances/ is known to be on disk (fsync'd since
        # this process started). A folder created by a write that failed before that fsync
        # is not in here, so the next write into it makes its entry durable.
        self._durable_folders: set[str] = set()
        self._durable_lock = threading.Lock()
        try:
            for folder in (self.root, self.instances, self.outputs, self.tmp):
                folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)  # the entries of instances/, outputs/ and tmp/ on disk
        except OSError as exc:
            raise SpoolError(f"storage.spool_dir: cannot create {folder} ({exc.strerror})") from exc
        self._lock_fd: int | None = self._lock() if exclusive else None
        self._purge_partials()

    def _lock(self) -> int:
        """Hold ``node.lock`` for this process (released by :meth:`close` or its exit)."""
        path = self.root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise SpoolError(f"storage.spool_dir: cannot lock {path} ({exc.strerror})") from exc
            raise SpoolError(
                f"storage.spool_dir: {self.root} is in use by another dicom-node (process "
                f"{holder}); two nodes must never share a spool"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return fd

    @staticmethod
    def in_use(root: Path) -> str | None:
        """The process id holding ``root``'s lock (a node serving it), else None; touches
        nothing (a demo checks before it clears its old spool)."""
        try:
            fd = os.open(root / LOCK_NAME, os.O_RDWR)
        except OSError:
            return None  # no lock file: never served, or not a spool
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        finally:
            os.close(fd)  # also releases the lock just taken
        return None

    def close(self) -> None:
        """Release the spool's lock (a node's stop); the files stay."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _purge_partials(self) -> None:
        # Partial files are from writes that were never acknowledged; nothing refers to them.
        for leftover in self.tmp.iterdir():
            log.info("removing partial spool file %s left by an interrupted write", leftover.name)
            leftover.unlink(missing_ok=True)

    def study_lock(self, study_uid: str) -> threading.Lock:
        """The lock held while a study's files are written and indexed, or removed."""
        return self._study_locks[zlib.crc32(study_uid.encode()) % _LOCK_STRIPES]

    def instance_lock(self, sop_instance_uid: str) -> threading.Lock:
        """The lock held, before its study's, while an instance is looked up, written and
        indexed: the same SOP Instance UID sent under two studies at once would otherwise
        be indexed once and written twice, one file an orphan."""
        return self._instance_locks[zlib.crc32(sop_instance_uid.encode()) % _LOCK_STRIPES]

    def relative_path(self, study_uid: str, sop_instance_uid: str) -> str:
        return f"instances/{study_uid}/{sop_instance_uid}.dcm"

    def path(self, relative: str) -> Path:
        return self.root / relative

    def free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.root).free
        except OSError as exc:
            raise SpoolError(f"cannot read the spool's free space ({exc.strerror})") from exc

    @contextmanager
    def reserve(self, size: int) -> Iterator[Reservation]:
        """Hold ``size`` bytes of free space while they are written, or refuse them when
        they would leave less than ``min_free_bytes`` free. Writes at once each count what
        the others have yet to write: checked alone, two large instances could both pass
        and together take the spool below its guard. Only what is yet to be written: a
        write given the reservation hands back each chunk as it lands (the file system's
        free space already counts it), else a write in progress was counted twice and an
        instance that fitted was refused 0xA700."""
        with self._space_lock:
            free = self.free_bytes()
            if free - self._reserved - size < self.min_free_bytes:
                pending = f" ({self._reserved} yet to be written)" if self._reserved else ""
                raise SpoolFullError(
                    f"spool has {free} bytes free{pending}; storing {size} more would go "
                    f"below storage.min_free_bytes ({self.min_free_bytes})"
                )
            self._reserved += size
        reservation = Reservation(self, size)
        try:
            yield reservation
        finally:
            reservation.landed(reservation.left)

    def release_reserved(self, size: int) -> None:
        """``size`` reserved bytes are written (or no longer needed): held apart no more."""
        with self._space_lock:
            self._reserved -= size

    def write(
        self,
        relative: str,
        chunks: Iterable[bytes | memoryview],
        reservation: Reservation | None = None,
    ) -> None:
        """Write ``chunks`` durably to ``relative``, replacing any previous file atomically
        (each chunk handed back to ``reservation`` once written)."""
        final = self.path(relative)
        tmp: Path | None = None
        try:
            # Inside the try: out of inodes is ENOSPC from here, and must read as full.
            fd, tmp_name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    # In slices, so a large instance's reservation shrinks as it lands.
                    for start in range(0, len(view), _WRITE_SLICE):
                        piece = view[start : start + _WRITE_SLICE]
                        handle.write(piece)
                        if reservation is not None:
                            reservation.landed(len(piece))
                handle.flush()
                os.fsync(handle.fileno())
            folder = final.parent
            folder.mkdir(parents=True, exist_ok=True)
            tmp.replace(final)
            fsync_dir(folder)
            with self._durable_lock:
                known = str(folder) in self._durable_folders
            if not known:
                fsync_dir(folder.parent)
                with self._durable_lock:
                    if len(self._durable_folders) >= _DURABLE_FOLDERS_KEPT:
                        self._durable_folders.clear()  # costs one extra fsync per study
                    self._durable_folders.add(str(folder))
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(f"spool file system is full writing {relative}") from exc
            raise SpoolError(f"cannot write {relative} to the spool ({exc.strerror})") from exc

    def forget_folder(self, study_uid: str) -> None:
        """The study's folders are being removed: the next write into one must fsync its
        parent (instances/, outputs/) again."""
        with self._durable_lock:
            self._durable_folders.discard(str(self.instances / study_uid))
            self._durable_folders.discard(str(self.outputs / study_uid))

    def holds_data_set(self, relative: str, stream: bytes | memoryview) -> bool:
        """Is the data set of the spooled file at ``relative`` exactly ``stream``?

        Only the data set is compared: the File Meta before it names the calling AE,
        which may differ when the same instance is re-sent by another sender. Its length
        comes from the File Meta's group length, so a data set that is only the end of
        the stored one (elements removed from its start) is not taken for it.
        """
        path = self.path(relative)
        try:
            with path.open("rb") as handle:
                head = handle.read(_META_HEAD)
                if len(head) < _META_HEAD or head[128:140] != _GROUP_LENGTH_ELEMENT:
                    return False
                start = _META_HEAD + int.from_bytes(head[140:144], "little")
                if os.fstat(handle.fileno()).st_size - start != len(stream):
                    return False
                handle.seek(start)
                return handle.read() == stream
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SpoolError(f"cannot read {relative} in the spool ({exc.strerror})") from exc

    def remove(self, relative: str) -> None:
        """Remove a file the index no longer refers to; a failure is logged, not raised
        (the instance it replaced is already stored and indexed)."""
        try:
            self.path(relative).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s from the spool (%s)", relative, exc.strerror)


class Reservation:
    """The part of a :meth:`Spool.reserve` not yet written."""

    def __init__(self, spool: Spool, size: int) -> None:
        self._spool = spool
        self.left = size

    def landed(self, size: int) -> None:
        """``size`` more bytes are on the file system: no longer held apart."""
        done = min(size, self.left)
        self.left -= done
        self._spool.release_reserved(done)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file or folder in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
