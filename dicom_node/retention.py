"""Spool retention: a finished study's files leave the spool ``storage.retention_hours`` later.

A study is finished when it is complete, none of its jobs is pending and every outbox row
of it was delivered; a pending row or a dead letter keeps it (its results are not yet where
they belong). It finished at the latest of its instances' arrivals, its completion, its
jobs' outcomes and its deliveries.

Purging a study deletes its instance rows and its delivered outbox rows and stamps the study
``purged_at``, in one transaction; then the files those rows named are removed, with
whatever else is in the study's two folders (``instances/<study>``, ``outputs/<study>``:
the results of a job that had no destination, files a crash left). History stays:
the study and its jobs keep their rows (``dicom-node studies`` and ``jobs`` still list them).
Both steps run under the study's spool lock, which the receiver holds while it writes and
indexes an instance, so an instance arriving for the study is either purged with it (it was
indexed before) or untouched (it reopens the study, which is then no longer finished). A crash
between the two steps leaves files no row names; ``sweep`` removes them at the next start
(also those of a study the node has no record of). A study has files exactly when its
``purged_at`` is NULL (state.py keeps it so), which is what a round's query selects on.
A study that receives instances after a purge is a new episode: its next job sees only them.
Each round first takes finish times later than the current time as the current time
(:func:`clamp_future_times`: a clock that ran fast, then was set back).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from dicom_node.errors import SpoolFullError, StateError
from dicom_node.metrics import Metrics
from dicom_node.receive.header import is_valid_uid
from dicom_node.spool import Spool
from dicom_node.state import State
from dicom_node.worker import Worker

log = logging.getLogger(__name__)

_INTERVAL = 60.0  # most seconds between rounds while nothing is left to purge
# Room the purge's commit can take back on a spool full to the last byte (WAL pages for the
# deleted rows: a few hundred KiB even for a batch of large studies).
BALLAST_NAME = "retention.ballast"
BALLAST_BYTES = 8 << 20
_BATCH = 100  # studies per round; a full batch starts the next round at once

# The latest moment anything happened to study s (named ``s`` in the queries below).
_FINISHED_AT = """MAX(
    s.last_received_at, COALESCE(s.completed_at, 0),
    COALESCE((SELECT MAX(finished_at) FROM jobs j WHERE j.study_uid = s.study_uid), 0),
    COALESCE((SELECT MAX(sent_at) FROM outbox o WHERE o.study_uid = s.study_uid), 0),
    COALESCE((SELECT MAX(received_at) FROM instances i WHERE i.study_uid = s.study_uid), 0))"""

# The times _FINISHED_AT reads that a wall clock running fast may have put in the future
# (a study still receiving keeps its own: state.py re-arms its deadlines from them). Only
# of studies with files: studies and jobs keep their rows after a purge, and the round
# scanned every study and job ever seen under the state lock (a quarter of a second at a
# million, each minute); instances and outbox rows leave with the purge.
_UNPURGED = "study_uid IN (SELECT study_uid FROM studies WHERE purged_at IS NULL)"
_CLOCKED = (
    ("instances", "received_at", ""),
    ("jobs", "finished_at", f" AND {_UNPURGED}"),
    ("outbox", "sent_at", ""),
    ("studies", "last_received_at", " AND state = 'complete' AND purged_at IS NULL"),
    ("studies", "completed_at", " AND state = 'complete' AND purged_at IS NULL"),
)


def clamp_future_times(state: State, now: float) -> int:
    """Take the finish times later than ``now`` as ``now``; how many there were. They were
    written while the wall clock ran fast (a VM booted with a wrong RTC, then corrected by
    NTP): the retention would keep their studies until the clock caught up, plus the
    retention, weeks perhaps, however short ``retention_hours`` is."""
    changed = 0
    with state.transaction() as db:
        for table, column, only in _CLOCKED:
            changed += db.execute(
                f"UPDATE {table} SET {column} = ? WHERE {column} > ?{only}", (now, now)
            ).rowcount
    if changed:
        log.warning(
            "%d receipt, job and delivery times were after the current time (the clock was "
            "set back?): the retention counts them from now", changed,
        )  # fmt: skip
    return changed


# A study has files in the spool exactly when purged_at is NULL (state.py keeps it so; an
# index on it keeps the round's cost to what the spool holds, not to every study seen).
_FINISHED = f"""s.state = 'complete' AND s.purged_at IS NULL
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid AND j.state = 'pending')
    AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = s.study_uid AND o.state != 'sent')
    AND {_FINISHED_AT} <= ?"""


# Our own results that came back for a study this node has no record of (another node with
# the same software, or a state database reset): indexed, never a study, and purged once
# their last instance is older than the retention.
_OWN_ONLY = """SELECT i.study_uid FROM instances i
    WHERE NOT EXISTS (SELECT 1 FROM studies s WHERE s.study_uid = i.study_uid)
    GROUP BY i.study_uid HAVING MAX(i.process) = 0 AND MAX(i.received_at) <= ?"""


@dataclass(frozen=True)
class Purged:
    """What one study's purge removed."""

    study_uid: str
    files: int
    bytes: int


def purgeable(state: State, cutoff: float, limit: int = _BATCH) -> list[str]:
    """Studies finished at or before ``cutoff`` that still have files, oldest first; then
    studies that are only our own returned results, received at or before ``cutoff``."""
    with state.transaction() as db:
        rows = db.execute(
            f"SELECT s.study_uid FROM studies s WHERE {_FINISHED} "
            "ORDER BY s.last_received_at LIMIT ?",
            (cutoff, limit),
        ).fetchall()
        if len(rows) < limit:
            rows += db.execute(f"{_OWN_ONLY} LIMIT ?", (cutoff, limit - len(rows))).fetchall()
    return [str(r[0]) for r in rows]


def purge_study(
    state: State, spool: Spool, study_uid: str, cutoff: float, now: float
) -> Purged | None:
    """Remove a finished study's files and their rows; ``None`` leaves a study that is not
    (or no longer) finished at ``cutoff`` alone."""
    with spool.study_lock(study_uid):
        try:
            with state.transaction() as db:
                paths = _forget(db, study_uid, cutoff, now)
        except StateError as exc:
            # A spool full to the last byte: the commit needs WAL room for the deleted rows,
            # so the retention could free nothing and the node refused every instance until
            # an admin deleted files. The ballast gives that room back, once.
            if not _disk_full(exc) or not _give_up_ballast(spool):
                raise
            with state.transaction() as db:
                paths = _forget(db, study_uid, cutoff, now)
        if paths is None:
            return None
        # Also what no row names: results of a job without destinations, crash leftovers.
        files, size = _remove(spool, sorted(set(paths) | set(_folder_files(spool, study_uid))))
        _remove_empty_folders(spool, study_uid)
    return Purged(study_uid, files, size)


def _disk_full(exc: StateError) -> bool:
    """Whether SQLite could not commit for want of space: SQLITE_FULL, or a failed write
    (a quota reached, EDQUOT, comes back as SQLITE_IOERR_WRITE, not as SQLITE_FULL)."""
    cause = exc.__cause__
    return getattr(cause, "sqlite_errorname", None) in ("SQLITE_FULL", "SQLITE_IOERR_WRITE")


def ballast_path(spool: Spool) -> Path:
    """The file the purger keeps in the spool to give up when the disk is full."""
    return spool.root / BALLAST_NAME


def lay_ballast(spool: Spool) -> bool:
    """Allocate the ballast if it is missing and the spool has room for it beside
    ``storage.min_free_bytes`` twice over; whether it is there now."""
    path = ballast_path(spool)
    if path.exists():
        return True
    tmp = path.with_suffix(".tmp")
    try:
        # Through the disk guard, beside the writes it has admitted: free space, less what
        # they have yet to write, must hold the ballast and the reserve twice over.
        with spool.reserve(spool.min_free_bytes + 2 * BALLAST_BYTES):
            with tmp.open("wb") as handle:
                # Blocks really allocated (a file of zeros may be sparse or compressed away).
                os.posix_fallocate(handle.fileno(), 0, BALLAST_BYTES)
            tmp.replace(path)
    except SpoolFullError:
        return False
    except OSError as exc:
        with suppress(OSError):  # a read-only spool root refuses this too
            tmp.unlink(missing_ok=True)
        log.warning("cannot lay the retention's ballast %s (%s)", path, exc.strerror or exc)
        return False
    return True


def _give_up_ballast(spool: Spool) -> bool:
    """Delete the ballast for a purge that could not commit; whether there was one."""
    try:
        ballast_path(spool).unlink()
    except FileNotFoundError:
        log.error("spool file system full: the purge cannot commit and the retention has no "
                  "ballast left (used up, or never laid for want of room); free space by "
                  "hand")  # fmt: skip
        return False
    log.warning("spool file system full: the retention's ballast (%d MiB) was given up so "
                "that the purge can commit; it is laid again once there is room",
                BALLAST_BYTES >> 20)  # fmt: skip
    return True


def _forget(db: sqlite3.Connection, study_uid: str, cutoff: float, now: float) -> list[str] | None:
    finished = db.execute(
        f"SELECT 1 FROM studies s WHERE s.study_uid = ? AND {_FINISHED}", (study_uid, cutoff)
    ).fetchone()
    if finished is None:
        own_only = db.execute(
            f"SELECT 1 FROM ({_OWN_ONLY}) WHERE study_uid = ?", (cutoff, study_uid)
        ).fetchone()
        if own_only is None:
            return None
    paths = _named_paths(db, study_uid)
    db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
    db.execute("DELETE FROM outbox WHERE study_uid = ?", (study_uid,))
    db.execute("UPDATE studies SET purged_at = ? WHERE study_uid = ?", (now, study_uid))
    return sorted(paths)


def _named_paths(db: sqlite3.Connection, study_uid: str) -> set[str]:
    """The spool files the study's instance and outbox rows name."""
    rows = db.execute(
        "SELECT path FROM instances WHERE study_uid = ? UNION SELECT path FROM outbox "
        "WHERE study_uid = ?",
        (study_uid, study_uid),
    )
    return {str(r[0]) for r in rows}


def _remove(spool: Spool, relatives: list[str]) -> tuple[int, int]:
    files = size = 0
    for relative in relatives:
        path = spool.path(relative)
        try:
            length = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:  # one file must not stop the retention; the next sweep retries
            log.warning("cannot remove %s from the spool (%s); left in place",
                        relative, exc.strerror or exc)  # fmt: skip
            continue
        files += 1
        size += length
    return files, size


def _study_roots(spool: Spool) -> tuple[Path, Path]:
    """Where studies have folders: received instances and the node's own outputs."""
    return spool.instances, spool.outputs


def _study_folders(spool: Spool, study_uid: str) -> tuple[Path, ...]:
    return tuple(root / study_uid for root in _study_roots(spool))


def _folder_files(spool: Spool, study_uid: str) -> list[str]:
    """The files in the study's folders; a folder that cannot be listed (its permissions
    changed under the node, a disk error) is logged and skipped: one study must not stop
    the retention of the others."""
    files: list[str] = []
    for folder in _study_folders(spool, study_uid):
        try:
            if folder.is_dir():
                entries = sorted(folder.iterdir())
                files += [os.path.relpath(p, spool.root) for p in entries if p.is_file()]
        except OSError as exc:
            log.warning("cannot list %s in the spool (%s); its files are left in place",
                        os.path.relpath(folder, spool.root), exc.strerror or exc)  # fmt: skip
    return files


def _remove_empty_folders(spool: Spool, study_uid: str) -> None:
    spool.forget_folder(study_uid)  # a folder made again must have its entry fsync'd again
    for folder in _study_folders(spool, study_uid):
        try:
            folder.rmdir()
        except OSError:  # absent, or not empty: a file another row names keeps it
            continue


def _spooled_studies(spool: Spool) -> list[str]:
    """The studies with a folder in the spool (as many as the retention keeps). A folder
    whose name is not a UID is not the node's: it is logged and left alone."""
    names: set[str] = set()
    for root in _study_roots(spool):
        try:
            entries = [e for e in root.iterdir() if e.is_dir()] if root.is_dir() else []
        except OSError as exc:
            log.warning("cannot list %s in the spool (%s)", root.name, exc.strerror or exc)
            continue
        for entry in entries:
            if is_valid_uid(entry.name):
                names.add(entry.name)
            else:
                log.warning("%s/%s in the spool is not a study folder; left alone",
                            root.name, ascii(entry.name))  # fmt: skip
    return sorted(names)


def sweep(state: State, spool: Spool) -> Purged:
    """Remove the files no row names of purged studies (left by a crash mid-purge) and of
    studies the node has no record of (a purge of the node's own returned results cut short,
    an instance never acknowledged because the node stopped before indexing it).

    It walks the spool's study folders, not the history of purged studies, so a start
    costs what the retention keeps, however long the node has run. Each study is checked
    under its spool lock: one reopened (or first received) meanwhile is live and left alone.
    """
    files = size = 0
    for study_uid in _spooled_studies(spool):
        with spool.study_lock(study_uid):
            with state.transaction() as db:
                row = db.execute(
                    "SELECT purged_at FROM studies WHERE study_uid = ?", (study_uid,)
                ).fetchone()
                if row is not None and row[0] is None:
                    continue  # a live study: its files are its own
                named = _named_paths(db, study_uid)
            orphans = [f for f in _folder_files(spool, study_uid) if f not in named]
            n, length = _remove(spool, orphans)
            _remove_empty_folders(spool, study_uid)
        files, size = files + n, size + length
    return Purged("", files, size)


class Purger(Worker):
    """Purges finished studies older than ``retention_hours``, a batch per round."""

    def __init__(
        self, state: State, spool: Spool, retention_hours: float, metrics: Metrics | None = None
    ) -> None:
        super().__init__("purger", after_error=_INTERVAL)
        self.state = state
        self.spool = spool
        self.retention_seconds = retention_hours * 3600.0
        # A tenth of the retention, so a study leaves at most 10 % late; 1 s at least.
        self.interval = max(1.0, min(_INTERVAL, self.retention_seconds / 10))
        self.metrics = metrics if metrics is not None else Metrics()
        self._swept = False

    def round(self) -> float:
        if not self._swept:
            left = sweep(self.state, self.spool)
            self._swept = True
            if left.files:
                self.metrics.purged_bytes.inc(left.bytes)
                log.info("removed %d files (%d bytes) left by an interrupted purge",
                         left.files, left.bytes)  # fmt: skip
        lay_ballast(self.spool)
        now = time.time()
        clamp_future_times(self.state, now)
        return 0.0 if self.purge_due(now) == _BATCH else self.interval

    def purge_due(self, now: float) -> int:
        """One batch: purge studies finished ``retention_hours`` ago; returns how many."""
        cutoff = now - self.retention_seconds
        done = 0
        for study_uid in purgeable(self.state, cutoff):
            if self.stopping:
                break
            purged = purge_study(self.state, self.spool, study_uid, cutoff, now)
            if purged is None:  # reopened since it was listed
                continue
            self.metrics.purged_studies.inc()
            self.metrics.purged_bytes.inc(purged.bytes)
            log.info("purged study %s from the spool: %d files, %d bytes",
                     study_uid, purged.files, purged.bytes)  # fmt: skip
            done += 1
        return done
