"""The durable outbox: what is due, what was delivered, dead letters and their requeue.

Rows live in the node's SQLite state (the ``outbox`` table of :mod:`dicom_node.state`), so
results queued by a job survive a crash and are delivered after a restart.
A failed attempt is retried after an exponential backoff with jitter; after
``sending.max_attempts`` the row becomes a dead letter until an operator
requeues it (``dicom-node outbox retry``) or gives up on it (``dicom-node outbox discard``).
"""

from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from dicom_node.config_results import SendingConfig
from dicom_node.errors import StateError
from dicom_node.models import OutboxItem
from dicom_node.state import State

log = logging.getLogger(__name__)

_COLUMNS = (
    "id, job_id, study_uid, sop_instance_uid, sop_class_uid, path, destination, state, "
    "attempts, next_attempt_at, last_error, created_at, sent_at"
)
STATES = ("pending", "sent", "dead")
CLOCK_STEP_SECONDS = 60.0  # a step back by more than this past the longest backoff is one


def backoff_seconds(attempts: int, cfg: SendingConfig, rng: random.Random | None = None) -> float:
    """The wait after ``attempts`` failed attempts: exponential, capped, with "equal jitter"
    (between half and all of it) so many items failing together do not retry together."""
    base = min(cfg.max_backoff_seconds, cfg.backoff_seconds * 2 ** max(attempts - 1, 0))
    return float(base * (0.5 + 0.5 * (rng or random).random()))


@dataclass(frozen=True)
class DestinationLane:
    """Which rows one sender thread works on: those of ``destination``, or, with ``None``,
    those whose destination is none of ``configured`` (they fail as not configured)."""

    destination: str | None
    configured: tuple[str, ...] = ()


def _lane_clause(lane: DestinationLane | None) -> tuple[str, tuple[str, ...]]:
    if lane is None:
        return "", ()
    if lane.destination is not None:
        return " AND destination = ?", (lane.destination,)
    if not lane.configured:
        return "", ()
    return f" AND destination NOT IN ({','.join('?' * len(lane.configured))})", lane.configured


def _in_order(items: list[OutboxItem]) -> list[OutboxItem]:
    """Each study's rows for one destination together, in the order they were queued; the
    groups earliest due first."""
    groups: dict[tuple[str, str], list[OutboxItem]] = {}
    for item in items:
        groups.setdefault((item.study_uid, item.destination), []).append(item)
    ordered = sorted(groups.values(), key=lambda g: min((i.next_attempt_at, i.id) for i in g))
    return [item for group in ordered for item in sorted(group, key=lambda i: i.id)]


class Outbox:
    def __init__(self, state: State, cfg: SendingConfig) -> None:
        self.state = state
        self.cfg = cfg

    def due(
        self, now: float, limit: int = 200, lane: DestinationLane | None = None
    ) -> list[OutboxItem]:
        """Pending rows whose next attempt is due, earliest due first (only ``lane``'s, if
        given), at most ``limit``.

        A study's rows for one destination go in the order they were queued, and an earlier
        one is due with any later one: a report superseded by a rerun's (its Predecessor
        Documents name it), still waiting out the backoff of an outage, was delivered after
        the report that replaces it, and a PACS that shows the newest report showed it.

        A row scheduled further ahead than any backoff (``sending.max_backoff_seconds``,
        plus a minute for a small clock correction) was scheduled before the wall clock
        stepped back: it is due now, rather than when the clock catches up, an hour later
        perhaps (as the state re-arms studies at a restart, :meth:`State.recover`)."""
        where, params = _lane_clause(lane)
        with self.state.transaction() as db:
            stepped = db.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE state = 'pending' "
                "AND next_attempt_at > ?",
                (now, now + self.cfg.max_backoff_seconds + CLOCK_STEP_SECONDS),
            ).rowcount
            if stepped:
                log.warning(
                    "outbox: %d item(s) were due after more than the longest backoff: the "
                    "clock stepped back, or sending.max_backoff_seconds was lowered; they are "
                    "due now", stepped,
                )  # fmt: skip
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM outbox AS item WHERE state = 'pending' "
                "AND (next_attempt_at <= ? OR EXISTS (SELECT 1 FROM outbox AS later "
                "WHERE later.state = 'pending' AND later.study_uid = item.study_uid "
                "AND later.destination = item.destination AND later.id > item.id "
                f"AND later.next_attempt_at <= ?)){where}",
                (now, now, *params),
            ).fetchall()
        return _in_order([OutboxItem(*row) for row in rows])[:limit]

    def next_due(self, lane: DestinationLane | None = None) -> float | None:
        where, params = _lane_clause(lane)
        with self.state.transaction() as db:
            row = db.execute(
                f"SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'{where}", params
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_sent(self, item_id: int, now: float) -> None:
        with self.state.transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE id = ? AND state = 'pending'",
                (now, item_id),
            )

    def mark_failed(self, item_id: int, now: float, error: str) -> OutboxItem:
        """Count a failed attempt: schedule the next one, or make the row a dead letter."""
        with self.state.transaction() as db:
            row = db.execute("SELECT attempts FROM outbox WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise StateError(f"outbox: no item {item_id}")
            attempts = int(row[0]) + 1
            dead = attempts >= self.cfg.max_attempts
            db.execute(
                "UPDATE outbox SET attempts = ?, state = ?, next_attempt_at = ?, last_error = ? "
                "WHERE id = ?",
                (attempts, "dead" if dead else "pending",
                 now + (0.0 if dead else backoff_seconds(attempts, self.cfg)), error[:1000],
                 item_id),
            )  # fmt: skip
            out = db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (item_id,)).fetchone()
        return OutboxItem(*out)

    def wait_with_earlier(self, item_id: int) -> float:
        """An item left unsent, uncharged, when its association ended waits for the latest
        attempt of an earlier pending row of its study and destination, if that is later:
        ``due`` sends those rows before it, so were it due now it would pull a row that just
        failed back in ahead of its backoff, round after round, to a dead letter in seconds.
        Returns when the item is due."""
        with self.state.transaction() as db:
            db.execute(
                "UPDATE outbox SET next_attempt_at = MAX(next_attempt_at, COALESCE(("
                "SELECT MAX(earlier.next_attempt_at) FROM outbox AS earlier "
                "WHERE earlier.state = 'pending' AND earlier.study_uid = outbox.study_uid "
                "AND earlier.destination = outbox.destination AND earlier.id < outbox.id), 0)) "
                "WHERE id = ? AND state = 'pending'",
                (item_id,),
            )
            row = db.execute(
                "SELECT next_attempt_at FROM outbox WHERE id = ?", (item_id,)
            ).fetchone()
        if row is None:
            raise StateError(f"outbox: no item {item_id}")
        return float(row[0])

    def items(self, states: Sequence[str] = STATES) -> list[OutboxItem]:
        unknown = [s for s in states if s not in STATES]
        if unknown:
            raise StateError(f"outbox state: expected {', '.join(STATES)}, got {unknown[0]!r}")
        marks = ",".join("?" * len(states))
        with self.state.reading() as db:  # also on a read-only state (dicom-node outbox)
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE state IN ({marks}) ORDER BY id", tuple(states)
            ).fetchall()
        return [OutboxItem(*row) for row in rows]

    def retry(self, now: float, item_ids: Sequence[int] = ()) -> int:
        """Requeue dead letters (all, or those named) for immediate delivery; returns how many."""
        with self.state.transaction() as db:
            if item_ids:
                ids = _dead_letters(db, "retry", item_ids)
            else:
                rows = db.execute("SELECT id FROM outbox WHERE state = 'dead'").fetchall()
                ids = tuple(int(r[0]) for r in rows)
            for item_id in ids:
                db.execute(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ? "
                    "WHERE id = ?",
                    (now, item_id),
                )
        return len(ids)

    def discard(self, item_ids: Sequence[int]) -> list[OutboxItem]:
        """Give up on the named dead letters for good (a destination removed from the config,
        a result delivered by hand): their rows go, so they no longer keep their study from
        the retention; the result files go with the study. Returns what was discarded."""
        with self.state.transaction() as db:
            ids = _dead_letters(db, "discard", item_ids)
            marks = ",".join("?" * len(ids))
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE id IN ({marks}) ORDER BY id", ids
            ).fetchall()
            db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
        items = [OutboxItem(*row) for row in rows]
        for item in items:
            log.warning(
                "outbox: dead letter %d (SOP instance %s of study %s, to %s) discarded",
                item.id, item.sop_instance_uid, item.study_uid, item.destination,
            )  # fmt: skip
        return items

    def depth(self) -> dict[str, int]:
        with self.state.reading() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({str(s): int(n) for s, n in rows})
        return counts


def _dead_letters(db: sqlite3.Connection, verb: str, item_ids: Sequence[int]) -> tuple[int, ...]:
    """``item_ids``, each a dead letter, else a StateError naming those that are not."""
    if not item_ids:
        raise StateError(f"outbox {verb}: give the ids of the dead letters")
    marks = ",".join("?" * len(item_ids))
    found = db.execute(
        f"SELECT id FROM outbox WHERE state = 'dead' AND id IN ({marks})", tuple(item_ids)
    ).fetchall()
    missing = sorted(set(item_ids) - {int(r[0]) for r in found})
    if missing:
        raise StateError(f"outbox {verb}: no dead letter with id {', '.join(map(str, missing))}")
    return tuple(sorted(int(r[0]) for r in found))
