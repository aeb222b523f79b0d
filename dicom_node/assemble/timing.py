"""When is a study complete? The rule, as a pure function of persisted facts.

A study is complete ``quiet_seconds`` after its last instance; once no open
association is carrying it, ``after_release_seconds`` after that release; and
in any case ``max_wait_seconds`` after its first instance. Every input is a
wall-clock time stored in SQLite, so the same deadline is recomputed after a
restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.config import AssemblyConfig


@dataclass(frozen=True)
class Deadline:
    due_at: float
    reason: str  # "quiet", "released" or "max_wait": which rule set the deadline


def deadline(
    first_received_at: float,
    last_received_at: float,
    open_associations: int,
    released_at: float | None,
    rules: AssemblyConfig,
) -> Deadline:
    candidates = [
        Deadline(last_received_at + rules.quiet_seconds, "quiet"),
        Deadline(first_received_at + rules.max_wait_seconds, "max_wait"),
    ]
    if open_associations == 0 and released_at is not None:
        candidates.append(Deadline(released_at + rules.after_release_seconds, "released"))
    return min(candidates, key=lambda d: d.due_at)
