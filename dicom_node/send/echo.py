"""Destination reachability for /readyz: a C-ECHO to each DICOM destination, periodically.

A folder destination is reachable when its folder exists and can be written.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pynetdicom import AE

from dicom_node.address import host_port
from dicom_node.config_results import Destination
from dicom_node.identity import name_the_node
from dicom_node.send.peers import folder_missing, not_established
from dicom_node.worker import Worker

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
REPEAT_SECONDS = 900.0  # while a destination stays unreachable for the same reason


def echo(destination: Destination, calling_ae: str, timeout: float) -> str | None:
    """None when the destination answered C-ECHO with success, else the reason."""
    if destination.type == "folder":
        if destination.path is None:
            return "folder destination without a path"
        missing = folder_missing(destination.path)
        if missing is not None:
            return missing
        try:
            fd, name = tempfile.mkstemp(dir=destination.path, suffix=".probe")
            os.close(fd)
            Path(name).unlink()
        except OSError as exc:
            return f"cannot write {destination.path}: {exc.strerror or exc}"
        return None
    ae = AE(ae_title=calling_ae)
    name_the_node(ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout  # else a firewalled host holds connect() for minutes
    ae.add_requested_context(VERIFICATION)
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as exc:
        return f"cannot reach {host_port(destination.host, destination.port)}: {exc}"
    if not assoc.is_established:
        return f"association {not_established(assoc)}"
    asked = time.monotonic()
    try:
        status = assoc.send_c_echo()
    except RuntimeError as exc:  # the association ended under it (pynetdicom's own check)
        return f"C-ECHO not sent: {exc}"
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:  # pynetdicom's empty answer: none, or the association ended
        if time.monotonic() - asked < timeout:
            # Before the timeout (pynetdicom aborts on its own timeout too): the PACS ended
            # it, refusing rather than slow, which was read as a timeout.
            return "association ended by the peer before the C-ECHO was answered"
        return f"no C-ECHO response within {timeout:g} s"
    code = int(status.Status)
    return None if code == 0 else f"C-ECHO answered failure 0x{code:04X}"


class EchoMonitor(Worker):
    """Echoes every destination each ``interval`` seconds; remembers the last answer."""

    def __init__(
        self,
        destinations: Sequence[Destination],
        calling_ae: str,
        interval: float,
        timeout: float,
    ) -> None:
        super().__init__("echo")
        self.destinations = tuple(destinations)
        self.calling_ae = calling_ae
        self.interval = interval
        self.timeout = timeout
        self._last_ok: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._logged: dict[str, tuple[str, float]] = {}  # the reason last logged, and when
        self._lock = threading.Lock()

    def stop(self, timeout: float | None = None) -> None:
        super().stop(self.timeout + 5 if timeout is None else timeout)

    def round(self) -> float:
        self.check_all()
        return self.interval

    def check_all(self) -> None:
        """Each destination at once, in its own thread: one that never answers (a firewall
        dropping its packets costs a whole timeout) must not hold the others' checks back
        past their deadline, which would mark healthy destinations not ready."""
        if len(self.destinations) <= 1:
            for destination in self.destinations:
                self._check(destination)
            return
        with ThreadPoolExecutor(len(self.destinations), thread_name_prefix="echo") as pool:
            list(pool.map(self._check, self.destinations))

    def _check(self, destination: Destination) -> None:
        reason = echo(destination, self.calling_ae, self.timeout)
        now, fresh = time.time(), False
        with self._lock:
            logged = self._logged.pop(destination.name, None)
            if reason is None:
                self._last_ok[destination.name] = now
                self._last_error.pop(destination.name, None)
            else:
                self._last_error[destination.name] = reason
                # Logged when it goes down, when its reason changes and every REPEAT_SECONDS
                # while it stays down: not every round (2,880 lines a day at 30 s).
                if logged is not None and logged[0] == reason and now - logged[1] < REPEAT_SECONDS:
                    self._logged[destination.name] = logged
                else:
                    self._logged[destination.name] = (reason, now)
                    fresh = True
        if reason is None and logged is not None:
            log.info("destination %s reachable again", destination.described)
        elif reason is not None and fresh:
            log.warning("destination %s not reachable: %s", destination.described, reason)

    def up(self) -> dict[str, bool]:
        """Whether each destination's last check succeeded (False before the first)."""
        with self._lock:
            return {
                d.name: d.name in self._last_ok and d.name not in self._last_error
                for d in self.destinations
            }

    def problems(self, now: float) -> dict[str, str]:
        """Destinations without a successful echo in the last two intervals, with why."""
        out = {}
        with self._lock:
            for destination in self.destinations:
                last = self._last_ok.get(destination.name)
                if last is None or now - last > 2 * self.interval + self.timeout:
                    out[destination.name] = self._last_error.get(
                        destination.name, "no successful C-ECHO yet"
                    )
        return out
