"""The node's durable state in SQLite (WAL, synchronous=FULL): instances, studies, jobs.

One connection, serialised by a lock: association threads index instances,
the assembler thread completes studies. Every change that must happen
together (index an instance and move its study's deadline; complete a study
and create its job) is one transaction, so a crash leaves either all of it or
none of it, and a study cannot be completed twice.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from pydicom.uid import generate_uid

from dicom_node.assemble.timing import deadline
from dicom_node.config import AssemblyConfig
from dicom_node.errors import StateError
from dicom_node.models import (
    IndexedInstance,
    Job,
    ReceivedInstance,
    ResultObject,
    StoreOutcome,
    StudySummary,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5

# The outbox: one row per result object and destination, durable until delivered
# (dicom_node/send/outbox.py works on it).
OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
"""

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL,
    process INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'complete')),
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    open_associations INTEGER NOT NULL,
    released_at REAL,
    due_at REAL,
    due_reason TEXT,
    completed_at REAL,
    completions INTEGER NOT NULL DEFAULT 0,
    completion_reason TEXT,
    purged_at REAL
);
CREATE INDEX IF NOT EXISTS studies_due ON studies (state, due_at);
CREATE INDEX IF NOT EXISTS studies_unpurged ON studies (state) WHERE purged_at IS NULL;
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    instance_count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    started_at REAL,
    finished_at REAL,
    priority TEXT,
    summary TEXT,
    error TEXT,
    runs INTEGER NOT NULL DEFAULT 0,
    UNIQUE (study_uid, generation)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs (study_uid);
"""
    + OUTBOX_SCHEMA
    + "CREATE INDEX IF NOT EXISTS outbox_by_study ON outbox (study_uid);\n"
)

# Version 1 had no results: its jobs gain the result columns, the outbox is new.
_MIGRATE_1_TO_2 = """
ALTER TABLE jobs ADD COLUMN started_at REAL;
ALTER TABLE jobs ADD COLUMN finished_at REAL;
ALTER TABLE jobs ADD COLUMN priority TEXT;
ALTER TABLE jobs ADD COLUMN summary TEXT;
ALTER TABLE jobs ADD COLUMN error TEXT;
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
"""

# Version 2 did not purge: its studies gain the time their files left the spool.
_MIGRATE_2_TO_3 = "ALTER TABLE studies ADD COLUMN purged_at REAL;"
# Version 3 did not count how often a job was started (a crash mid-job left no trace).
_MIGRATE_3_TO_4 = "ALTER TABLE jobs ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;"
# Version 4 left purged_at set when the node's own results came back for a purged study:
# from 5 on, a study has files in the spool exactly when purged_at is NULL.
_MIGRATE_4_TO_5 = """UPDATE studies SET purged_at = NULL WHERE purged_at IS NOT NULL
    AND (EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = studies.study_uid)
         OR EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = studies.study_uid));"""
# From a version to the next: the table the step alters (None: always runs; a database
# that never had the table gets it, whole, from _SCHEMA) and the step's SQL.
_MIGRATIONS: dict[str, tuple[str | None, str]] = {
    "1": (None, _MIGRATE_1_TO_2 + OUTBOX_SCHEMA),
    "2": ("studies", _MIGRATE_2_TO_3),
    "3": ("jobs", _MIGRATE_3_TO_4),
    "4": ("studies", _MIGRATE_4_TO_5),
}


def _newer(version: str) -> bool:
    """Is a stored schema version one a later release wrote?"""
    return version.isdigit() and int(version) > SCHEMA_VERSION


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of ``script`` one by one (``executescript`` would commit the
    transaction a migration step runs in)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


# A StudySummary's columns; the instance count is of instances to process.
_STUDY_SUMMARY = (
    "SELECT s.study_uid, s.state, "
    "(SELECT COUNT(*) FROM instances i WHERE i.study_uid = s.study_uid AND i.process = 1), "
    "s.first_received_at, s.last_received_at, s.open_associations, s.due_at, "
    "s.completed_at, s.completions, s.completion_reason, s.purged_at FROM studies s"
)

_JOB_COLUMNS = (
    "id, study_uid, generation, created_at, state, instance_count, reason, "
    "started_at, finished_at, priority, summary, error, runs"
)


# How far ahead of the assembler's clock a receipt time may be without a clock step: the
# threads read the clock before they wait for the state's lock.
CLOCK_SKEW_SECONDS = 1.0
# How long a metrics scrape's read waits for SQLite (it is not blocked by a writer in WAL
# mode; a checkpoint or a recovery may hold it): the scrape answers within Prometheus' 10 s.
SCRAPE_BUSY_MS = 1000


class State:
    def __init__(
        self, path: Path, rules: AssemblyConfig, readonly: bool = False, create: bool = True
    ) -> None:
        """Open (or create, and migrate) the node's state database at ``path``.

        ``readonly`` is for commands that only list: the file is opened read-only, nothing
        is created or migrated, and a file that is not a state database of this version is
        refused (an empty one came back as a new database and "0 jobs"; an admin account
        that may only read the node's files got "attempt to write a readonly database").
        ``create=False`` is for commands that change an existing database (outbox retry
        and discard): refused the same way, never made a new one (an empty file became one,
        and "requeued 0 dead letters" exited 0).
        """
        self.path = path
        self.rules = rules
        self._lock = threading.Lock()
        # The metrics' own connection (counts), opened at the first scrape: reads through
        # the shared one waited on self._lock behind writers, each up to busy_timeout
        # (10 s) while another process held the database (an admin's sqlite3 shell).
        self._scrape_lock = threading.Lock()
        self._scrape_db: sqlite3.Connection | None = None
        try:
            if readonly:
                self._db = self._open_readonly(path)
                self._check_existing()
                return
            if create:
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            else:  # mode=rw: a missing file is an error, not a new empty one
                uri = f"{path.resolve().as_uri()}?mode=rw"
                self._db = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False
                )
                self._check_existing()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._check_version()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: cannot open the node's state database ({exc})") from exc

    @staticmethod
    def _open_readonly(path: Path) -> sqlite3.Connection:
        """A read-only connection. A WAL database needs its -shm file to be read; with the
        node stopped there is none, and an account that may not write the spool cannot make
        one: then, with no -wal file either (nothing in it but the database), the file is
        read as immutable."""
        uri = f"{path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            db.close()
            if Path(f"{path}-wal").exists():
                raise
            db = sqlite3.connect(
                f"{uri}&immutable=1", uri=True, isolation_level=None, check_same_thread=False
            )
        return db

    def _check_existing(self) -> None:
        """Refuse (closing it) a database that is not the node's, or of another version."""
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        row = (
            self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if has_meta
            else None
        )
        if row is None:
            self._db.close()
            raise StateError(
                f"{self.path}: not a state database of the node (empty or damaged; a node "
                "started on it would make a new one)"
            )
        if row[0] != str(SCHEMA_VERSION):
            self._db.close()
            action = (
                "it was written by a newer dicom-node: run that release, or restore the "
                "backup taken before the upgrade"  # the node refuses it: a dead end
                if _newer(row[0])
                else "start the node once to migrate it"
            )
            raise StateError(
                f"{self.path}: schema version {row[0]}, this node reads {SCHEMA_VERSION}: {action}"
            )

    def _check_version(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        while self._migrate_one_step():
            pass
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] != str(SCHEMA_VERSION):  # before touching its tables
            raise StateError(
                f"{self.path}: schema version {row[0]}, this node needs {SCHEMA_VERSION}"
                + (
                    " (written by a newer dicom-node: run that release, or restore the "
                    "backup taken before the upgrade)"
                    if _newer(row[0])
                    else ""
                )
            )
        self._create()

    def _create(self) -> None:
        """The tables and the version of a new database, in one transaction: created one by
        one and the version after, a first start killed between them left tables without a
        version, which the next start stamped as current without migrating them (every job
        query then failed, start after start)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # Read again in the write transaction: another process (a CLI command beside
            # the starting node) may have created it while this one waited.
            if db.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is None:
                tables = [
                    name
                    for (name,) in db.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'meta'"
                    )
                ]
                if tables:
                    raise StateError(
                        f"{self.path}: holds the node's tables ({', '.join(sorted(tables))}) "
                        "but no schema version (a first start stopped before it recorded "
                        "one?): refused rather than guessed; move it aside to start with a "
                        "new one (its studies, jobs and outbox are then not known)"
                    )
            for statement in _statements(_SCHEMA):
                db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _migrate_one_step(self) -> bool:
        """Apply the next migration step, if any; False when there is none.

        The version is read inside the step's write transaction: another process opening
        the same database (a CLI command beside the starting node) may have applied the
        step while this one waited for the lock, and a step must not run twice.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None or row[0] not in _MIGRATIONS:
                db.execute("COMMIT")
                return False
            table, script = _MIGRATIONS[row[0]]
            present = (
                table is None
                or db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone()
            )
            if present:
                for statement in _statements(script):
                    db.execute(statement)
            db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(int(row[0]) + 1),)
            )
            db.execute("COMMIT")
            return True
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._scrape_lock:
            if self._scrape_db is not None:
                self._scrape_db.close()
                self._scrape_db = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    # Also when COMMIT itself failed: a connection left inside the
                    # transaction would refuse every later BEGIN until a restart.
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc

    def reading(self) -> AbstractContextManager[sqlite3.Connection]:
        """The connection for reads only (what a read-only state allows)."""
        return self._reading()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for a read, with database errors as StateError like writes."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc

    # --- receiving -------------------------------------------------------------

    def indexed(self, sop_instance_uid: str) -> IndexedInstance | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT path, sop_class_uid, study_uid, series_uid, modality, transfer_syntax, "
                "size FROM instances WHERE sop_instance_uid = ?",
                (sop_instance_uid,),
            ).fetchone()
        return None if row is None else IndexedInstance(*row)

    def record_instance(
        self, inst: ReceivedInstance, first_for_association: bool, kind: str
    ) -> StoreOutcome:
        """Index ``inst`` and move its study's deadline, in one transaction.

        ``first_for_association`` says this association has not carried the study
        before, so it now counts as one more open association carrying it.
        """
        h = inst.header
        started = reopened = touched = False
        with self.transaction() as db:
            if kind != "duplicate":
                db.execute(
                    "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        h.sop_instance_uid, h.sop_class_uid, h.study_uid, h.series_uid,
                        h.modality, inst.transfer_syntax, inst.relative_path, inst.size,
                        inst.calling_ae, inst.received_at, 0 if inst.own_output else 1,
                    ),
                )  # fmt: skip
            if inst.own_output:  # kept, not processed; a purged study has files again
                db.execute(
                    "UPDATE studies SET purged_at = NULL "
                    "WHERE study_uid = ? AND purged_at IS NOT NULL",
                    (h.study_uid,),
                )
            else:
                row = db.execute(
                    "SELECT state FROM studies WHERE study_uid = ?", (h.study_uid,)
                ).fetchone()
                # A resent identical instance keeps a receiving study open but does not
                # reopen a completed one: it carries nothing new. Unless the study's last
                # job failed, or was skipped (no routing rule selected an image, until the
                # config was fixed): resending it from the PACS is how an admin reruns it.
                if (
                    kind != "duplicate"
                    or (row is not None and row[0] == "receiving")
                    or (row is not None and self._last_job_rerunnable(db, h.study_uid))
                ):
                    started = row is None or row[0] == "complete"
                    reopened = row is not None and row[0] == "complete"
                    self._touch_study(db, h.study_uid, inst.received_at, first_for_association)
                    touched = True
        return StoreOutcome(
            kind=kind, study_touched=touched, study_started=started, study_reopened=reopened
        )

    @staticmethod
    def _last_job_rerunnable(db: sqlite3.Connection, study_uid: str) -> bool:
        row = db.execute(
            "SELECT state FROM jobs WHERE study_uid = ? ORDER BY generation DESC LIMIT 1",
            (study_uid,),
        ).fetchone()
        return row is not None and row[0] in ("failed", "skipped")

    def _touch_study(
        self, db: sqlite3.Connection, study_uid: str, now: float, new_carrier: bool
    ) -> None:
        row = db.execute(
            "SELECT state, first_received_at, open_associations, released_at "
            "FROM studies WHERE study_uid = ?",
            (study_uid,),
        ).fetchone()
        if row is None:
            first, open_count, released = now, 1, None
        elif row[0] == "complete":
            # A late instance opening a new episode of a completed study (its completion
            # makes a new job). Associations that carried the study and are still open
            # still count: one of them ending must not pass for the study's release.
            first, released = now, None
            open_count = row[2] + (1 if new_carrier else 0)
        else:
            first = row[1]
            open_count = row[2] + (1 if new_carrier else 0)
            released = row[3] if open_count == 0 else None
        due = deadline(first, now, open_count, released, self.rules)
        db.execute(
            "INSERT INTO studies (study_uid, state, first_received_at, last_received_at, "
            "open_associations, released_at, due_at, due_reason) VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT (study_uid) DO UPDATE SET state = excluded.state, "
            "first_received_at = excluded.first_received_at, "
            "last_received_at = excluded.last_received_at, "
            "open_associations = excluded.open_associations, released_at = excluded.released_at, "
            "due_at = excluded.due_at, due_reason = excluded.due_reason, purged_at = NULL",
            (study_uid, "receiving", first, now, open_count, released, due.due_at, due.reason),
        )

    def release(self, study_uids: set[str], now: float) -> None:
        """An association that carried ``study_uids`` has ended."""
        with self.transaction() as db:
            for uid in study_uids:
                row = db.execute(
                    "SELECT first_received_at, last_received_at, open_associations, state "
                    "FROM studies WHERE study_uid = ?",
                    (uid,),
                ).fetchone()
                if row is None:
                    continue
                if row[3] == "receiving":
                    self._rearm(db, uid, row[0], row[1], max(row[2] - 1, 0), now)
                else:  # complete: only the count, for a later episode (see _touch_study)
                    db.execute(
                        "UPDATE studies SET open_associations = ? WHERE study_uid = ?",
                        (max(row[2] - 1, 0), uid),
                    )

    def _rearm(
        self,
        db: sqlite3.Connection,
        uid: str,
        first: float,
        last: float,
        open_count: int,
        now: float,
    ) -> None:
        released = now if open_count == 0 else None
        due = deadline(first, last, open_count, released, self.rules)
        db.execute(
            "UPDATE studies SET open_associations = ?, released_at = ?, due_at = ?, "
            "due_reason = ? WHERE study_uid = ?",
            (open_count, released, due.due_at, due.reason, uid),
        )

    def recover(self, now: float) -> int:
        """After a restart no association is open: release every study still receiving.

        Also recomputes deadlines under the current assembly settings. Returns the
        number of studies re-armed.
        """
        with self.transaction() as db:
            self._rearm_after_clock_step(db, now)
            rows = db.execute(
                "SELECT study_uid, first_received_at, last_received_at, open_associations, "
                "released_at FROM studies WHERE state = 'receiving'"
            ).fetchall()
            for uid, first, last, open_count, released in rows:
                if open_count:
                    self._rearm(db, uid, first, last, 0, now)
                else:
                    due = deadline(first, last, 0, released, self.rules)
                    db.execute(
                        "UPDATE studies SET due_at = ?, due_reason = ? WHERE study_uid = ?",
                        (due.due_at, due.reason, uid),
                    )
            # Completed studies keep their count for a later episode: none is open now.
            db.execute(
                "UPDATE studies SET open_associations = 0 "
                "WHERE state = 'complete' AND open_associations != 0"
            )
        return len(rows)

    def _rearm_after_clock_step(self, db: sqlite3.Connection, now: float) -> None:
        """Studies received "after" ``now``: the wall clock stepped back (NTP correcting a
        clock that ran fast). Their times are taken as ``now`` and their deadlines
        recomputed; otherwise each would wait for the clock to catch up, hours perhaps.

        Times less than :data:`CLOCK_SKEW_SECONDS` ahead are not a step: a C-STORE that
        read the clock just after the assembler, and took the lock first, is "in the
        future" by milliseconds (the warning fired under ordinary concurrent load)."""
        rows = db.execute(
            "SELECT study_uid, first_received_at, last_received_at, open_associations, "
            "released_at FROM studies WHERE state = 'receiving' "
            "AND MAX(first_received_at, last_received_at, COALESCE(released_at, 0)) > ?",
            (now + CLOCK_SKEW_SECONDS,),
        ).fetchall()
        for uid, first, last, open_count, released in rows:
            first, last = min(first, now), min(last, now)
            released = None if released is None else min(released, now)
            due = deadline(first, last, open_count, released, self.rules)
            db.execute(
                "UPDATE studies SET first_received_at = ?, last_received_at = ?, "
                "released_at = ?, due_at = ?, due_reason = ? WHERE study_uid = ?",
                (first, last, released, due.due_at, due.reason, uid),
            )
        if rows:
            log.warning(
                "the clock is behind the receipt times of %d studies (it was set back?): "
                "their deadlines now count from the current time",
                len(rows),
            )

    # --- assembling ------------------------------------------------------------

    def next_due(self) -> float | None:
        with self._reading() as db:
            row = db.execute("SELECT MIN(due_at) FROM studies WHERE state = 'receiving'").fetchone()
        return None if row[0] is None else float(row[0])

    def complete_due(self, now: float, held: Collection[str] = ()) -> list[Job]:
        """Complete every study whose deadline has passed; each gets exactly one new job.
        A study in ``held`` (an instance of it may be arriving) waits, unless it has waited
        ``max_wait_seconds``."""
        jobs: list[Job] = []
        with self.transaction() as db:
            self._rearm_after_clock_step(db, now)
            due = db.execute(
                "SELECT study_uid, completions, due_reason, first_received_at FROM studies "
                "WHERE state = 'receiving' AND due_at <= ? ORDER BY due_at",
                (now,),
            ).fetchall()
            for uid, completions, reason, first in due:
                if uid in held:
                    if now < first + self.rules.max_wait_seconds:
                        continue
                    reason = "max_wait"
                count = db.execute(
                    "SELECT COUNT(*) FROM instances WHERE study_uid = ? AND process = 1", (uid,)
                ).fetchone()[0]
                generation = completions + 1
                db.execute(
                    "UPDATE studies SET state = 'complete', completed_at = ?, completions = ?, "
                    "completion_reason = ?, due_at = NULL WHERE study_uid = ?",
                    (now, generation, reason, uid),
                )
                cursor = db.execute(
                    "INSERT INTO jobs (study_uid, generation, created_at, instance_count, reason) "
                    "VALUES (?,?,?,?,?)",
                    (uid, generation, now, count, reason),
                )
                job_id = cursor.lastrowid
                if job_id is None:
                    raise StateError(f"job for study {uid} was not created")
                jobs.append(Job(job_id, uid, generation, now, "pending", count, reason))
        return jobs

    # --- reading ---------------------------------------------------------------

    def studies(self) -> list[StudySummary]:
        with self._reading() as db:
            rows = db.execute(f"{_STUDY_SUMMARY} ORDER BY s.last_received_at").fetchall()
        return [StudySummary(*row) for row in rows]

    def jobs(self, state: str | None = None) -> list[Job]:
        where, params = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._reading() as db:
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY id", params)
            return [Job(*row) for row in rows.fetchall()]

    def job(self, job_id: int) -> Job:
        with self._reading() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StateError(f"{self.path}: no job {job_id}")
        return Job(*row)

    def study_sources(self, study_uid: str) -> list[tuple[str, str]]:
        """(spool path, calling AE) of the study's instances to process, in arrival order."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT path, calling_ae FROM instances WHERE study_uid = ? AND process = 1 "
                "ORDER BY received_at, sop_instance_uid",
                (study_uid,),
            ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def study(self, study_uid: str) -> StudySummary | None:
        # One row by its key: this runs on every completion, so it must not grow with history.
        with self._reading() as db:
            row = db.execute(f"{_STUDY_SUMMARY} WHERE s.study_uid = ?", (study_uid,)).fetchone()
        return None if row is None else StudySummary(*row)

    def skip_if_superseded(self, job: Job, now: float) -> str | None:
        """Mark ``job`` skipped, and say why, when a later episode of its study has begun.

        A late instance reopening a completed study makes the study's next completion a
        new job over every instance; the earlier job, still pending, would analyse a study
        being received again, or repeat that later job's work. None: the job is current.
        """
        with self.transaction() as db:
            row = db.execute(
                "SELECT state, completions FROM studies WHERE study_uid = ?", (job.study_uid,)
            ).fetchone()
            if row is None or (row[0] == "complete" and row[1] <= job.generation):
                return None
            why = (
                "superseded: the study received more instances after this job was created; "
                "a later job analyses all of them"
            )
            db.execute(
                "UPDATE jobs SET state = 'skipped', finished_at = ?, error = ? "
                "WHERE id = ? AND state = 'pending'",
                (now, why, job.id),
            )
        return why

    def start_job(self, job_id: int, now: float) -> None:
        """Mark the job started, and count the start: a job started again and again never
        finished (the node stopped or crashed during it)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET started_at = ?, runs = runs + 1 WHERE id = ?", (now, job_id)
            )

    def job_ran_out(self, job_id: int) -> None:
        """The job's run ended in order but left it pending (a retry later): not a start
        that was cut short."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET runs = 0 WHERE id = ?", (job_id,))

    def finish_job(
        self,
        job_id: int,
        outcome: str,
        now: float,
        *,
        priority: str | None = None,
        summary: str | None = None,
        error: str | None = None,
        results: Sequence[ResultObject] = (),
        destinations: Sequence[str] = (),
    ) -> None:
        """Record a job's outcome and queue its results for every destination, atomically.

        A result already queued for a destination (the same object from an earlier run)
        keeps its row, so a delivered object is not delivered again.
        """
        if outcome not in ("done", "failed", "skipped"):
            raise StateError(f"job outcome: expected done, failed or skipped, got {outcome!r}")
        with self.transaction() as db:
            row = db.execute("SELECT study_uid FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise StateError(f"{self.path}: no job {job_id}")
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, priority = ?, summary = ?, error = ? "
                "WHERE id = ?",
                (outcome, now, priority, summary, error, job_id),
            )
            for result in results:
                for destination in destinations:
                    db.execute(
                        "INSERT OR IGNORE INTO outbox (job_id, study_uid, sop_instance_uid, "
                        "sop_class_uid, path, destination, next_attempt_at, created_at) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        (job_id, row[0], result.sop_instance_uid, result.sop_class_uid,
                         result.path, destination, now, now),
                    )  # fmt: skip

    def device_uid(self) -> str:
        """This installation's Device Observer UID (the SRs' TID 1004), made at its first
        use and kept with the state: every node wrote one UID, so reports from two sites'
        nodes claimed to come from the same device."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('device_uid', ?)",
                (generate_uid(),),
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'device_uid'").fetchone()
        return str(row[0])

    def queued_results(self, study_uid: str) -> set[str]:
        """The SOP Instance UIDs of the study's results that finished jobs queued for a
        destination (whatever became of them since)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT DISTINCT sop_instance_uid FROM outbox WHERE study_uid = ?", (study_uid,)
            ).fetchall()
        return {str(r[0]) for r in rows}

    def instance_paths(self, study_uid: str) -> list[str]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT path FROM instances WHERE study_uid = ? ORDER BY received_at",
                (study_uid,),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def counts(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Studies by state, and outbox rows by (state, destination): for the metrics, on a
        read-only connection of their own that waits at most SCRAPE_BUSY_MS, never behind
        the node's writers."""
        with self._scrape_lock:
            try:
                if self._scrape_db is None:
                    uri = f"{self.path.resolve().as_uri()}?mode=ro"
                    self._scrape_db = sqlite3.connect(
                        uri, uri=True, isolation_level=None, check_same_thread=False
                    )
                    self._scrape_db.execute(f"PRAGMA busy_timeout={SCRAPE_BUSY_MS}")
                db = self._scrape_db
                studies = db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state")
                study_counts = {str(s): int(n) for s, n in studies.fetchall()}
                rows = db.execute(
                    "SELECT state, destination, COUNT(*) FROM outbox GROUP BY state, destination"
                )
                outbox = {(str(s), str(d)): int(n) for s, d, n in rows.fetchall()}
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc
        for state in ("receiving", "complete"):
            study_counts.setdefault(state, 0)
        return study_counts, outbox

    def instance_count(self) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
