"""Making a race happen on purpose, without timing luck."""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np


class Closable(Protocol):
    def close(self) -> None: ...


class ClosingBatch(dict[str, np.ndarray]):
    """A batch (``image`` only) whose first read closes ``runtime`` from another thread: a
    close that lands after infer's closed check, while the backend takes the batch."""

    def __init__(self, runtime: Closable, images: np.ndarray) -> None:
        super().__init__(image=images)
        self.runtime = runtime

    def __getitem__(self, name: str) -> np.ndarray:
        closer = threading.Thread(target=self.runtime.close)
        closer.start()
        closer.join()
        return super().__getitem__(name)
