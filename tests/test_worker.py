from __future__ import annotations

import threading
import time

from dicom_node.worker import Worker


class Counting(Worker):
    def __init__(self, fail_first: bool = False) -> None:
        super().__init__("counting", after_error=0.2)
        self.rounds = 0
        self.fail_first = fail_first
        self.ran = threading.Event()

    def round(self) -> float:
        self.rounds += 1
        if self.fail_first and self.rounds == 1:
            raise RuntimeError("first round fails")
        self.ran.set()
        return 60.0  # only a wake starts the next round soon


def test_wake_starts_the_next_round_and_stop_joins() -> None:
    worker = Counting()
    assert not worker.alive
    worker.start()
    try:
        assert worker.ran.wait(5)
        assert worker.alive
        before = worker.rounds
        worker.wake()
        deadline = time.monotonic() + 5
        while worker.rounds == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.rounds == before + 1
    finally:
        worker.stop(timeout=5)
    assert worker._thread is None and worker.stopping and not worker.alive


def test_a_failing_round_is_logged_and_the_worker_goes_on() -> None:
    worker = Counting(fail_first=True)
    started = time.monotonic()
    worker.start()
    try:
        assert worker.ran.wait(5)
        assert time.monotonic() - started >= 0.2  # waited after_error, not spinning
        assert worker.rounds == 2
    finally:
        worker.stop(timeout=5)
