"""The assembler thread: completes studies whose persisted deadline has passed.

Deadlines live in SQLite (see ``state.py``), so this thread holds no state of
its own: it sleeps until the earliest deadline or until woken by a change
(a new study, a released association), completes what is due, and repeats.
After a restart, ``State.recover`` re-arms the deadlines and the first pass
completes whatever fell due while the node was down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

from dicom_node.errors import StateError
from dicom_node.models import Job
from dicom_node.state import State

log = logging.getLogger(__name__)

# Upper bound on one sleep, so a wall-clock step (NTP) is noticed within a minute.
_MAX_SLEEP = 60.0
_RETRY_AFTER_ERROR = 1.0
# How often a study held past its deadline (an instance of it arriving) is looked at again.
_HELD_POLL = 0.25


class Assembler:
    def __init__(
        self,
        state: State,
        on_job: Callable[[Job], None] = lambda job: None,
        clock: Callable[[], float] = time.time,
        receiving: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.state = state
        self.on_job = on_job
        self.clock = clock
        # Studies an instance of which is arriving now (Receiver.receiving_studies): their
        # deadline waits until it is stored (max_wait_seconds excepted).
        self.receiving = receiving
        self._holding = False  # did the last pass hold any study?
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="assembler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Something changed (a deadline may be earlier now): look again."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run_once(self) -> list[Job]:
        """Complete every study due now; return the jobs created."""
        held = self.receiving()
        self._holding = bool(held)
        jobs = self.state.complete_due(self.clock(), held)
        for job in jobs:
            log.info(
                "study %s complete (%s): %d instances, job %d generation %d",
                job.study_uid, job.reason, job.instance_count, job.id, job.generation,
            )  # fmt: skip
            try:
                self.on_job(job)
            except Exception:  # the job is durable already; the pipeline finds it anyway
                log.exception("study %s: handing job %d on failed", job.study_uid, job.id)
        return jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
                due = self.state.next_due()
            except StateError as exc:
                log.error("assembler cannot read or update the state database: %s", exc)
                self._wake.wait(_RETRY_AFTER_ERROR)
                continue
            except Exception:  # the thread's boundary: it must outlive any one error
                # Without it no study ever completes while the node goes on acknowledging
                # instances.
                log.exception("assembler: unexpected error; retrying")
                self._wake.wait(_RETRY_AFTER_ERROR)
                continue
            sleep = _MAX_SLEEP if due is None else min(due - self.clock(), _MAX_SLEEP)
            if sleep <= 0 and self._holding:  # still due: held while an instance arrives
                sleep = _HELD_POLL
            if sleep > 0:
                self._wake.wait(sleep)
