"""The C-STORE service: check, spool durably, index, and only then answer success.

pynetdicom calls the ``handle_*`` functions from each association's thread,
bound with their dependency (``(evt.EVT_C_STORE, handle_store, [receiver])``).
They never raise: every failure becomes a DICOM status with an Error Comment
and a log line giving the reason, identified by UIDs only.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import events
from pynetdicom.dimse_primitives import C_STORE

from dicom_node.errors import RejectedInstanceError, SpoolError, SpoolFullError, StateError
from dicom_node.metrics import Metrics, sop_class_name
from dicom_node.models import Header, ReceivedInstance, StoreOutcome
from dicom_node.receive.file_meta import PREAMBLE, file_meta
from dicom_node.receive.header import (
    DOES_NOT_MATCH_SOP_CLASS,
    UID_MISMATCH,
    is_valid_uid,
    read_header,
)
from dicom_node.receive.own_output import is_own_output
from dicom_node.receive.sop_classes import STORAGE_SOP_CLASSES
from dicom_node.spool import Spool
from dicom_node.state import State

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122


# Ended associations remembered for a C-STORE still being handled when its association's
# end arrives (pynetdicom reports a closed connection from another thread); bounded.
_ENDED_KEPT = 256


@dataclass
class _Association:
    id: str
    calling_ae: str
    studies: set[str] = field(default_factory=set)
    ended: bool = False
    # A data set is arriving on it or being stored: from its first P-DATA fragment to the
    # end of its C-STORE (the assembler holds the studies it carries meanwhile).
    receiving: bool = False
    storing: bool = False  # its C-STORE handler is running


class Receiver:
    """Everything the C-STORE and association handlers need, in one place."""

    def __init__(
        self,
        spool: Spool,
        state: State,
        max_instance_bytes: int,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.spool = spool
        self.state = state
        self.max_instance_bytes = max_instance_bytes
        self.on_change = on_change
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self._lock = threading.Lock()
        self._associations: dict[int, _Association] = {}
        self._ended: OrderedDict[int, _Association] = OrderedDict()
        self._counter = itertools.count(1)

    # --- associations ------------------------------------------------------------

    def association_started(self, key: int, calling_ae: str, address: str) -> None:
        assoc = _Association(f"{calling_ae}@{address}#{next(self._counter)}", calling_ae)
        with self._lock:
            self._associations[key] = assoc
            self._ended.pop(key, None)  # the key of an ended association, reused
        self.metrics.associations.labels("accepted", "").inc()
        self.metrics.associations_active.inc()
        log.info("association %s accepted", assoc.id)

    def association_ended(self, key: int, how: str) -> None:
        """Release the studies the association carried. A C-STORE of it still being handled
        (its connection closed meanwhile) releases the study it adds itself (_count_study)."""
        with self._lock:
            assoc = self._associations.pop(key, None)
            if assoc is None:
                return  # already handled (release, then connection close) or never accepted
            assoc.ended = True
            # Cut off mid-data-set, no C-STORE follows; one being stored ends by itself.
            assoc.receiving = assoc.storing
            studies = set(assoc.studies)
            self._ended[key] = assoc
            while len(self._ended) > _ENDED_KEPT:
                self._ended.popitem(last=False)
        self.metrics.associations_active.dec()
        log.info("association %s ended (%s), carried %d studies", assoc.id, how, len(studies))
        self._release(assoc, studies)

    def tls_refused(self) -> None:
        """A TLS handshake was refused (BulkReadSocket): a rejected association, reason
        tls. An expired or re-issued client certificate refuses every connection of a
        PACS; only a log line said so, and the runbook's reason label showed nothing."""
        self.metrics.associations.labels("rejected", "tls").inc()

    def data_arriving(self, key: int) -> None:
        """A DIMSE data set has begun to arrive on association ``key`` (BulkReadSocket)."""
        with self._lock:
            assoc = self._associations.get(key)
            if assoc is not None:
                assoc.receiving = True

    def receiving_studies(self) -> frozenset[str]:
        """The studies carried by an association a data set is arriving on or being stored
        from (ended too, while its last C-STORE is stored): an instance of theirs may be
        on its way, so their quiet period is not over (the assembler waits). A transfer
        slower than assembly.quiet_seconds completed the study mid-instance: one report on
        the instances before it, then a second."""
        with self._lock:
            carriers = [*self._associations.values(), *self._ended.values()]
            return frozenset(uid for a in carriers if a.receiving for uid in a.studies)

    def _release(self, assoc: _Association, studies: set[str]) -> None:
        if studies:
            try:
                self.state.release(studies, self.clock())
            except StateError as exc:
                log.error("association %s: cannot record release (%s)", assoc.id, exc)
            self.on_change()

    def _association(self, key: int, calling_ae: str) -> _Association:
        with self._lock:
            assoc = self._associations.get(key) or self._ended.get(key)
            if assoc is None:  # EVT_ACCEPTED not seen (handler bound late); track anyway
                assoc = _Association(f"{calling_ae}#{next(self._counter)}", calling_ae)
                self._associations[key] = assoc
            return assoc

    # --- C-STORE -----------------------------------------------------------------

    def store(
        self, assoc_key: int, calling_ae: str, request_sop_class: str,
        request_sop_instance: str, transfer_syntax: str, stream: bytes | memoryview,
        context_sop_class: str | None = None,
    ) -> Dataset:  # fmt: skip
        """Store one instance; return the C-STORE response status dataset.
        ``context_sop_class`` is the abstract syntax of the presentation context it came on
        (None: not checked)."""
        started = time.perf_counter()
        assoc = self._association(assoc_key, calling_ae)
        with self._lock:
            assoc.receiving = assoc.storing = True
        try:
            response = self._store(
                assoc, request_sop_class, request_sop_instance, transfer_syntax, stream,
                context_sop_class,
            )  # fmt: skip
        finally:
            with self._lock:  # the assembler, holding its studies, looks again by itself
                assoc.receiving = assoc.storing = False
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        status = int(response.Status)
        if status == SUCCESS:
            labels = (sop_class_name(request_sop_class), self.metrics.calling_ae_label(calling_ae))
            self.metrics.instances_received.labels(*labels).inc()
            self.metrics.bytes_received.labels(*labels).inc(len(stream))
        else:
            self.metrics.instances_refused.labels(f"0x{status:04X}").inc()
        return response

    def _store(
        self, assoc: _Association, request_sop_class: str, request_sop_instance: str,
        transfer_syntax: str, stream: bytes | memoryview, context_sop_class: str | None,
    ) -> Dataset:  # fmt: skip
        try:
            # pynetdicom does not check the request against the context it came on: an MR
            # instance sent on a DX context was stored, answered 0x0000 and counted.
            if request_sop_class not in STORAGE_SOP_CLASSES or (
                context_sop_class is not None and request_sop_class != context_sop_class
            ):
                shown = shown_uid(request_sop_class)
                raise RejectedInstanceError(
                    SOP_CLASS_NOT_SUPPORTED,
                    f"SOP class not supported: {shown}"
                    if request_sop_class not in STORAGE_SOP_CLASSES
                    # The request's class first: the comment keeps 64 characters.
                    else f"SOP class {shown} on another class's context ({context_sop_class})",
                )
            if len(stream) > self.max_instance_bytes:
                raise RejectedInstanceError(
                    OUT_OF_RESOURCES,
                    f"instance of {len(stream)} bytes exceeds node.max_instance_bytes "
                    f"({self.max_instance_bytes})",
                )
            header = read_header(
                stream, transfer_syntax, max_inflated_bytes=self.max_instance_bytes
            )
            if header.sop_class_uid != request_sop_class:
                raise RejectedInstanceError(
                    DOES_NOT_MATCH_SOP_CLASS,
                    f"SOP Class UID differs from the request's: {header.sop_class_uid} in "
                    f"the data set, {shown_uid(request_sop_class)} in the request",
                )
            if header.sop_instance_uid != request_sop_instance:
                raise RejectedInstanceError(
                    UID_MISMATCH,
                    f"SOP Instance UID differs from the request's: {header.sop_instance_uid} "
                    f"in the data set, {shown_uid(request_sop_instance)} in the request",
                )
            outcome = self._spool_and_index(assoc, header, transfer_syntax, stream)
        except RejectedInstanceError as exc:
            log.warning(
                "association %s: refused SOP instance %s with status 0x%04X: %s",
                assoc.id, shown_uid(request_sop_instance), exc.status, exc.reason,
            )  # fmt: skip
            return _status(exc.status, exc.reason)
        except SpoolFullError as exc:
            log.error("association %s: refused SOP instance %s: %s",
                      assoc.id, shown_uid(request_sop_instance), exc)  # fmt: skip
            return _status(OUT_OF_RESOURCES, str(exc))
        except (SpoolError, StateError) as exc:
            log.error("association %s: could not store SOP instance %s: %s",
                      assoc.id, shown_uid(request_sop_instance), exc)  # fmt: skip
            return _status(OUT_OF_RESOURCES, f"not stored: {_cause(exc)}")
        log.debug(
            "association %s: stored SOP instance %s of study %s (%s, %d bytes, %s)",
            assoc.id, header.sop_instance_uid, header.study_uid, transfer_syntax, len(stream),
            outcome.kind,
        )  # fmt: skip
        return _status(SUCCESS, None)

    def _spool_and_index(
        self, assoc: _Association, header: Header, transfer_syntax: str, stream: bytes | memoryview
    ) -> StoreOutcome:
        # Held from the index lookup to the index update: a purge of the study waits, and so
        # does the same instance arriving on another association (under another study).
        with (
            self.spool.instance_lock(header.sop_instance_uid),
            self.spool.study_lock(header.study_uid),
        ):
            return self._spool_and_index_locked(assoc, header, transfer_syntax, stream)

    def _spool_and_index_locked(
        self, assoc: _Association, header: Header, transfer_syntax: str, stream: bytes | memoryview
    ) -> StoreOutcome:
        own = is_own_output(header)
        relative = self.spool.relative_path(header.study_uid, header.sop_instance_uid)
        indexed = self.state.indexed(header.sop_instance_uid)
        previous = None if indexed is None else indexed.path
        # The same bytes, and the index already says what indexing them would (a replacement
        # whose indexing failed left the new file under the old row: its resend must fix it).
        if (
            indexed is not None
            and indexed.describes(header, transfer_syntax, len(stream))
            and self.spool.holds_data_set(indexed.path, stream)
        ):
            kind = "duplicate"
        else:
            kind = "new" if previous is None else "replaced"
            meta = file_meta(
                header.sop_class_uid, header.sop_instance_uid, transfer_syntax, assoc.calling_ae
            )
            with self.spool.reserve(len(PREAMBLE) + len(meta) + len(stream)) as reservation:
                self.spool.write(relative, (PREAMBLE, meta, stream), reservation)
        instance = ReceivedInstance(
            header=header,
            transfer_syntax=transfer_syntax,
            calling_ae=assoc.calling_ae,
            association_id=assoc.id,
            relative_path=previous if kind == "duplicate" and previous else relative,
            size=len(stream),
            received_at=self.clock(),
            own_output=own,
        )
        counted = header.study_uid not in assoc.studies  # one more association carrying it
        try:
            outcome = self.state.record_instance(instance, counted, kind)
        except StateError:
            if kind == "new" or (kind == "replaced" and relative != previous):
                self.spool.remove(relative)  # not acknowledged, not indexed: no orphan
            raise
        if previous is not None and previous != relative and kind == "replaced":
            # Same SOP Instance UID re-sent under another study: the index now points here.
            self.spool.remove(previous)
        if kind != "new":
            log.info("SOP instance %s of study %s received again (%s)",
                     header.sop_instance_uid, header.study_uid, kind)  # fmt: skip
        if own:
            log.info("SOP instance %s is the node's own output; kept, not processed",
                     header.sop_instance_uid)  # fmt: skip
        if outcome.study_touched:
            self._count_study(assoc, header.study_uid, counted)
            if outcome.study_reopened:
                log.info("study %s reopened by a late instance", header.study_uid)
            if outcome.study_started:
                # Later instances only push the deadline back; the assembler finds out
                # when it wakes. A new deadline may be the earliest, so wake it now.
                self.on_change()
        return outcome

    def _count_study(self, assoc: _Association, study_uid: str, counted: bool) -> None:
        """Note that ``assoc`` carries the study; if the association ended while this
        instance was being stored, its end did not see the study: release it here, or the
        study would count an open association forever and wait out quiet_seconds."""
        with self._lock:
            assoc.studies.add(study_uid)
            late = assoc.ended and counted
        if late:
            self._release(assoc, {study_uid})


def _cause(exc: Exception) -> str:
    """What went wrong, without the spool or database path the message starts with: the
    Error Comment keeps 64 characters ('No space left on device', 'database is locked')."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause or exc)


def shown_uid(uid: str) -> str:
    """A UID a peer sent, as a log line or comment may show it: itself when it is one, else
    its ascii() (a newline in it would forge a log line of its own)."""
    return uid if is_valid_uid(uid) else ascii(uid)


def error_comment(text: str) -> str:
    """``text`` as an Error Comment: an LO of the command set (default repertoire), so
    printable ASCII without the backslash (the value separator: a peer kept only what came
    before it) and at most 64 characters, cut with "..."."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text).replace("\\", "/")
    return clean if len(clean) <= 64 else clean[:61] + "..."


def _status(code: int, comment: str | None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = error_comment(comment)
    return status


# --- pynetdicom event handlers ---------------------------------------------------


def handle_store(event: events.Event, receiver: Receiver) -> Dataset:
    request = cast(C_STORE, event.request)
    if request.DataSet is None:
        receiver.metrics.instances_refused.labels(f"0x{PROCESSING_FAILURE:04X}").inc()
        return _status(PROCESSING_FAILURE, "C-STORE request without a data set")
    # A view, not a copy: a large instance is already held once by pynetdicom.
    with request.DataSet.getbuffer() as stream:
        try:
            return receiver.store(
                id(event.assoc),
                _calling_ae(event),
                str(request.AffectedSOPClassUID),
                str(request.AffectedSOPInstanceUID),
                str(event.context.transfer_syntax),
                stream,
                str(event.context.abstract_syntax),
            )
        except Exception:  # the boundary: a bug must cost one refused instance, not the node
            uid = shown_uid(str(request.AffectedSOPInstanceUID))
            log.exception("internal error storing SOP instance %s", uid)
            receiver.metrics.instances_refused.labels(f"0x{PROCESSING_FAILURE:04X}").inc()
            return _status(PROCESSING_FAILURE, "internal error in the node; see its log")


def handle_echo(event: events.Event) -> int:
    log.debug("C-ECHO from %s", _calling_ae(event))
    return SUCCESS


def handle_accepted(event: events.Event, receiver: Receiver) -> None:
    address = event.assoc.requestor.address
    receiver.association_started(id(event.assoc), _calling_ae(event), str(address))


def handle_ended(event: events.Event, receiver: Receiver) -> None:
    receiver.association_ended(id(event.assoc), event.event.description.lower())


# Why, as the log says it (the metric label below names the same).
_REJECT_WORDS = {
    "application_context": "application context not supported",
    "calling_ae": "calling AE title not in node.allowed_calling_aes",
    "called_ae": "called AE title is not the node's",
    "congestion": "the node is stopping or too busy",
    "max_associations": "node.max_associations reached",
}
# (result source, diagnostic) of an A-ASSOCIATE-RJ, PS3.8 Table 9-21, as a metric label.
_REJECT_REASONS = {
    (1, 2): "application_context",
    (1, 3): "calling_ae",
    (1, 7): "called_ae",
    (3, 1): "congestion",
    (3, 2): "max_associations",
}


def handle_rejected(event: events.Event, receiver: Receiver) -> None:
    primitive = getattr(event.assoc.acceptor, "primitive", None)
    source = int(getattr(primitive, "result_source", None) or 0)
    key = (source, int(getattr(primitive, "diagnostic", None) or 0))
    reason = _REJECT_REASONS.get(key, "other")
    receiver.metrics.associations.labels("rejected", reason).inc()
    rq = event.assoc.requestor
    called = getattr(rq.primitive, "called_ae_title", "?")
    # The reason the node worked out, not a list of what it might have been.
    log.warning(
        "association from calling AE %r at %s to called AE %r rejected: %s",
        _calling_ae(event),
        rq.address,
        str(called).strip(),
        _REJECT_WORDS.get(reason, f"result source {key[0]}, diagnostic {key[1]}"),
    )


def _calling_ae(event: events.Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()
