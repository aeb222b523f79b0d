"""The sender: threads that deliver due outbox items to their destinations.

One thread (a lane) per configured destination, plus one for rows whose destination is no
longer configured, so a destination that hangs for ``sending.timeout_seconds`` holds back
only its own rows. Each round of a lane sends its due items over one association.
A delivered item is marked sent; a failure is counted and retried with backoff,
or becomes a dead letter after ``sending.max_attempts``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import closing
from pathlib import Path

from dicom_node.config_results import Destination
from dicom_node.errors import StateError
from dicom_node.metrics import Metrics
from dicom_node.models import OutboxItem
from dicom_node.send.outbox import DestinationLane, Outbox
from dicom_node.send.peers import Delivery, copy_to_folder, send_dicom
from dicom_node.worker import Worker

log = logging.getLogger(__name__)

_IDLE_POLL = 1.0  # seconds between looks at the outbox when nothing woke the sender
_AFTER_ERROR = 5.0  # a round that failed as a whole is not retried at once
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR: the study's result


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        destinations: Sequence[Destination],
        spool_dir: Path,
        calling_ae: str,
        on_sent: Callable[[OutboxItem, float], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.outbox = outbox
        self.destinations = {d.name: d for d in destinations}
        self.spool_dir = spool_dir
        self.calling_ae = calling_ae
        self.on_sent = on_sent
        configured = tuple(self.destinations)
        # Per destination, the items of the batch in hand not answered yet, first the one
        # on the wire (a stop that outwaits a slow PACS names it).
        self._unanswered: dict[str, list[OutboxItem]] = {}
        self.lanes = [_Lane(self, DestinationLane(name)) for name in configured]
        self.lanes.append(_Lane(self, DestinationLane(None, configured)))

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    def wake(self) -> None:
        """New work was queued: every lane looks at the outbox now."""
        for lane in self.lanes:
            lane.wake()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every lane: all are told first, so a lane inside a slow send costs at most
        ``timeout`` in all, not per lane."""
        for lane in self.lanes:
            lane.request_stop()
        give_up = time.monotonic() + timeout
        for lane in self.lanes:
            lane.join(max(give_up - time.monotonic(), 0.0))

    @property
    def alive(self) -> bool:
        return any(lane.alive for lane in self.lanes)

    def unanswered(self) -> list[OutboxItem]:
        """The item each destination's batch in hand is sending (no answer yet)."""
        return [items[0] for items in list(self._unanswered.values()) if items]

    @property
    def stopping(self) -> bool:
        return any(lane.stopping for lane in self.lanes)

    def send_due(self, now: float, lane: DestinationLane | None = None) -> int:
        """Deliver everything due (of ``lane``, or of every destination one after the
        other); returns how many items were delivered."""
        items = self.outbox.due(now, lane=lane)
        by_destination: dict[str, list[OutboxItem]] = {}
        for item in items:
            by_destination.setdefault(item.destination, []).append(item)
        delivered = 0
        for name, batch in by_destination.items():
            if self.stopping:
                break
            # Each delivery is recorded before the next item is sent, and a stop ends the
            # batch between items (closing releases the association).
            waiting = self._unanswered[name] = list(batch)
            try:
                with closing(self._deliver(name, batch)) as deliveries:
                    for result in deliveries:
                        if result.item in waiting:
                            waiting.remove(result.item)
                        try:
                            delivered += self._record(result, now)
                        except StateError:
                            if not self.stopping:
                                raise
                            # The stop outwaited this send (a C-STORE may take
                            # sending.timeout_seconds) and closed the state under it.
                            log.warning(
                                "%s to %s: outcome not recorded, the node stopped during the "
                                "send; it is sent again at the next start",
                                result.item.sop_instance_uid, result.item.destination,
                            )  # fmt: skip
                            break
                        if self.stopping:
                            break
            finally:
                self._unanswered.pop(name, None)
        return delivered

    def _deliver(self, name: str, batch: list[OutboxItem]) -> Generator[Delivery, None, None]:
        destination = self.destinations.get(name)
        if destination is None:
            return (Delivery(i, False, f"destination {name!r} is not configured") for i in batch)
        if destination.type == "folder":
            return copy_to_folder(destination, batch, self.spool_dir)
        timeout = self.outbox.cfg.timeout_seconds
        return send_dicom(destination, batch, self.spool_dir, self.calling_ae, timeout)

    def _record(self, result: Delivery, due_at: float) -> int:
        """Record one delivery of the round that took the items due at ``due_at``."""
        item, now = result.item, time.time()
        if result.ok:
            self.outbox.mark_sent(item.id, now)
            self.metrics.send_attempts.labels(item.destination, "sent").inc()
            self._time_to_result(item, now)
            log.info("sent %s of study %s to %s (%s)", item.sop_instance_uid, item.study_uid,
                     item.destination, result.detail)  # fmt: skip
            if self.on_sent is not None:
                self.on_sent(item, now)
            return 1
        if not result.ok and item.next_attempt_at > due_at:
            # Not due itself: it went ahead of its own backoff with a later row of its study
            # (Outbox.due). Charged, it spent its attempts at every one of theirs too: the
            # study's SR was a dead letter after ~31 minutes of an outage, not 42-84. Still an
            # attempt, where it was offered: counted in the metric.
            if result.counts_as_attempt:
                self.metrics.send_attempts.labels(item.destination, "failed").inc()
            log.info("%s to %s not sent (%s); it was only sent along with a later object "
                     "of its study, its own next attempt stays as it was",
                     item.sop_instance_uid, item.destination, result.detail)  # fmt: skip
            return 0
        if not result.counts_as_attempt:  # not charged: the peer never saw it
            due = self.outbox.wait_with_earlier(item.id)
            log.info("%s to %s not sent yet (%s); it goes in the next association%s",
                     item.sop_instance_uid, item.destination, result.detail,
                     f", in {due - now:.1f} s with the earlier item of its study"
                     if due > now else "")  # fmt: skip
            return 0
        after = self.outbox.mark_failed(item.id, now, result.detail)
        outcome = "dead" if after.state == "dead" else "failed"
        self.metrics.send_attempts.labels(item.destination, outcome).inc()
        if after.state == "dead":
            log.error(
                "dead letter %d: %s to %s after %d attempts: %s",
                item.id, item.sop_instance_uid, item.destination, after.attempts, result.detail,
            )  # fmt: skip
        else:
            log.warning("sending %s to %s failed (attempt %d, next in %.1f s): %s",
                        item.sop_instance_uid, item.destination, after.attempts,
                        after.next_attempt_at - now, result.detail)  # fmt: skip
        return 0

    def _time_to_result(self, item: OutboxItem, now: float) -> None:
        """First instance received to the study's SR accepted: what a radiologist waits."""
        if item.sop_class_uid != SR_CLASS:
            return
        study = self.outbox.state.study(item.study_uid)
        # An SR queued before the study was reopened belongs to the earlier episode, whose
        # first instance the study no longer records: not measured.
        if study is not None and study.first_received_at <= item.created_at:
            self.metrics.time_to_result_seconds.labels(item.destination).observe(
                now - study.first_received_at
            )


class _Lane(Worker):
    """The thread that sends one destination's rows (or the unconfigured ones)."""

    def __init__(self, sender: Sender, lane: DestinationLane) -> None:
        name = "sender" if lane.destination is None else f"sender:{lane.destination}"
        super().__init__(name, after_error=_AFTER_ERROR)
        self.sender = sender
        self.lane = lane

    def round(self) -> float:
        self.sender.send_due(time.time(), self.lane)
        next_due = self.sender.outbox.next_due(self.lane)
        return _IDLE_POLL if next_due is None else min(_IDLE_POLL, next_due - time.time())
