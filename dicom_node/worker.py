"""A background worker: a daemon thread that runs rounds until stopped.

``round()`` does the work and says how long to wait before the next one; ``wake()``
starts the next round early (new work arrived). A round that raises is logged and the
worker waits ``after_error`` seconds (not cut short by wakes, so a persistent fault cannot
spin), then goes on: one failure never stops the node's pipeline, sender or monitors.
"""

from __future__ import annotations

import abc
import logging
import threading

log = logging.getLogger(__name__)


class Worker(abc.ABC):
    def __init__(self, name: str, after_error: float = 5.0) -> None:
        self.name = name
        self.after_error = after_error
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def round(self) -> float:
        """Do one round of work; return the seconds to wait before the next."""

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        self.join(timeout)

    def request_stop(self) -> None:
        """Tell the thread to stop after its current round, without waiting for it."""
        self._stop.set()
        self._wake.set()

    @property
    def alive(self) -> bool:
        """Is the thread still running (a round in hand, or not yet told to stop)?"""
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.round()
            except Exception:  # a worker outlives any one failure; it is logged
                log.exception("%s round failed; retrying in %.0f s", self.name, self.after_error)
                self._stop.wait(self.after_error)
                continue
            if wait > 0:
                self._wake.wait(wait)
            self._wake.clear()
