"""Delivering result files: C-STORE to a DICOM peer, or a copy into a folder.

Each function takes a batch of outbox items for one destination and yields
one :class:`Delivery` per item as soon as that item is done, so the caller records
each delivery before the next is attempted (a stop or a crash mid-batch re-sends
nothing already delivered). A failure to read or send one item is that item's
failed delivery; the functions raise only for a programming error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.config_results import Destination
from dicom_node.errors import describe
from dicom_node.identity import name_the_node
from dicom_node.models import OutboxItem
from dicom_node.spool import fsync_dir

log = logging.getLogger(__name__)

SUCCESS = 0x0000
# The slowest transfer a result is given time for, on top of sending.timeout_seconds: the
# DIMSE and idle timers run from the request's first byte, so a 7 MB overlay on a link
# under 2 Mbit/s failed every attempt at the default 30 s though its data kept flowing.
MIN_TRANSFER_BYTES_PER_SECOND = 64 * 1024


def is_stored(code: int) -> bool:
    """Does a C-STORE status mean the object was stored? Success, or a warning: PS3.7
    Annex C gives 0x0001 and every 0xBxxx as warnings (PS3.4 B.2.3 names coercion
    0xB000, elements discarded 0xB006, data set does not match 0xB007; vendors use the
    rest of the range), and 0x0107 / 0x0116 (attribute list, value out of range)."""
    return code in (SUCCESS, 0x0001, 0x0107, 0x0116) or code & 0xF000 == 0xB000


@dataclass(frozen=True)
class Delivery:
    item: OutboxItem
    ok: bool
    detail: str  # the status or the reason
    # False for an item never offered to the peer because the association ended after an
    # earlier item: the item did not fail, it waits for the next association.
    counts_as_attempt: bool = True


def send_dicom(
    destination: Destination,
    items: Sequence[OutboxItem],
    spool_dir: Path,
    calling_ae: str,
    timeout: float,
) -> Generator[Delivery, None, None]:
    """C-STORE every item over one association; each answered status is checked."""
    ae = AE(ae_title=calling_ae)
    name_the_node(ae)
    # connection_timeout too: without it a firewalled host holds connect() for the OS's
    # TCP timeout (minutes), not ``timeout``.
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class in sorted({i.sop_class_uid for i in items}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    where = destination.described
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as exc:  # e.g. a host name that does not resolve
        yield from (Delivery(i, False, f"cannot reach {where}: {exc}") for i in items)
        return
    if not assoc.is_established:
        reason = not_established(assoc)
        yield from (Delivery(i, False, f"association to {where} {reason}") for i in items)
        return
    _bound_each_send(assoc, timeout)
    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    offered = False  # has an item of this batch been sent to the peer?
    ended = f"association to {where} ended"
    try:
        for item in items:
            # Charged only when no item was offered: else a peer that aborts right after
            # accepting would have the batch retried at once, for ever.
            if not assoc.is_established:
                yield Delivery(item, False, ended, counts_as_attempt=not offered)
            elif item.sop_class_uid not in accepted:
                yield Delivery(item, False, f"{where} accepted no context for {item.sop_class_uid}")
            elif (delivery := _store_one(assoc, item, spool_dir, where, timeout)) is None:
                yield Delivery(item, False, ended, counts_as_attempt=not offered)
            else:
                offered = True
                yield delivery
    finally:
        if assoc.is_established:
            assoc.release()


def _bound_each_send(assoc: Association, timeout: float) -> None:
    """A peer that stops reading (a hung PACS process: its kernel keeps the connection open
    with a zero window) ends the association after ``timeout`` without progress.
    pynetdicom clears the socket's timeout once connected, so its reactor blocked in
    send() for good, and so did the abort its DIMSE timeout called (it waits for that
    reactor): the destination's sender hung, its row pending without an attempt, until
    the next start, where it hung again."""
    transport = assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.settimeout(timeout)


def not_established(assoc: Association) -> str:
    """Why an association request failed, in the words an admin acts on. pynetdicom marks
    a refused connection, a peer that never answers and one that accepts none of the
    proposed contexts alike as aborted; the response (or its absence) tells them apart."""
    if assoc.is_rejected:
        return rejection(assoc)
    rsp = assoc.acceptor.primitive
    if rsp is None:
        # A PACS port that speaks TLS only closes at once too (its TLS alert is not DICOM):
        # named, or the admin looked at the network only.
        return (
            "got no answer (connection refused, the peer down or unreachable, or silent "
            "for the timeout; or a TLS-only port, and the node sends plain TCP)"
        )
    if getattr(rsp, "result", None) == 0 and not assoc.accepted_contexts:
        refused = sorted({str(c.abstract_syntax) for c in assoc.rejected_contexts})
        named = ", ".join(f"{uid} ({UID(uid).name})" for uid in refused) or "none proposed"
        return f"accepted none of the proposed SOP classes: {named}"
    return "aborted" if assoc.is_aborted else "failed"


def rejection(assoc: Association) -> str:
    """``rejected (<result>, <source>: <reason>)``: what the admin fixes (an AE title, ...)."""
    rsp = assoc.acceptor.primitive
    if rsp is None:
        return "rejected"
    try:
        return (
            f"rejected ({rsp.result_str.lower()}, {rsp.source_str.lower()}: "
            f"{rsp.reason_str.lower()})"
        )
    except (KeyError, ValueError, TypeError):  # codes outside PS3.8's tables
        return "rejected"


def _store_one(
    assoc: Association, item: OutboxItem, spool_dir: Path, where: str, timeout: float
) -> Delivery | None:
    """The item's delivery; None where the association ended before the item was offered.

    A damaged file fails its own item only, whatever pydicom or pynetdicom raise for it:
    a truncated file is struct.error while reading or (values are read lazily) while
    sending, a file without its UIDs AttributeError, no context for its syntax ValueError.
    """
    try:
        size = (spool_dir / item.path).stat().st_size
        ds = dcmread(spool_dir / item.path)
    except (OSError, InvalidDicomError) as exc:
        return Delivery(item, False, f"cannot read {item.path}: {describe(exc)}")
    except Exception as exc:  # noqa: BLE001 - see above
        return Delivery(item, False, f"cannot read {item.path}: {describe(exc)}")
    # The answer within ``timeout`` of the transfer's time at the slowest rate allowed
    # (a stalled transfer ends sooner: _bound_each_send).
    assoc.dimse_timeout = assoc.network_timeout = timeout + size / MIN_TRANSFER_BYTES_PER_SECOND
    try:
        status = assoc.send_c_store(ds)
    except Exception as exc:  # noqa: BLE001 - see above
        if not assoc.is_established:
            # A peer's abort that pynetdicom's reactor took in after the caller's check:
            # send_c_store refused to start (RuntimeError), the peer never saw the item.
            return None
        return Delivery(item, False, f"cannot send {item.path} to {where}: "
                        f"{describe(exc)}")  # fmt: skip
    code = int(status.Status) if "Status" in status else None
    if code is None:
        return Delivery(item, False, f"no C-STORE response from {where}")
    if not is_stored(code):
        return Delivery(item, False, f"{where} answered failure 0x{code:04X}")
    if code != SUCCESS:
        log.warning("%s stored %s with warning 0x%04X", where, item.sop_instance_uid, code)
    return Delivery(item, True, f"0x{code:04X}")


def copy_to_folder(
    destination: Destination, items: Sequence[OutboxItem], spool_dir: Path
) -> Generator[Delivery, None, None]:
    """Copy each item to ``path/<study>/<sop>.dcm`` durably: temporary file, fsync,
    atomic rename, then the folders' fsync (a new study folder's entry too), as the spool
    writes, so an item marked sent survives a power loss.

    ``path`` itself must exist: only the study folders are made. Made with its parents,
    an unmounted share's mount point filled up with results on the local disk, each
    marked sent."""
    if destination.path is None:
        raise ValueError(f"destination {destination.name}: a folder destination needs a path")
    for item in items:
        missing = folder_missing(destination.path)
        if missing is not None:
            yield Delivery(item, False, missing)
            continue
        target = destination.path / item.study_uid / f"{item.sop_instance_uid}.dcm"
        source = spool_dir / item.path
        if not source.is_file():
            yield Delivery(item, False, f"cannot read {item.path}: no such file")
            continue
        tmp = target.with_suffix(".tmp")
        try:
            created = not target.parent.is_dir()
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, tmp)
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
            tmp.replace(target)
            fsync_dir(target.parent)
            if created:
                fsync_dir(target.parent.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):  # an unusable folder: the failure says why
                tmp.unlink(missing_ok=True)
            yield Delivery(item, False, f"cannot write {target}: {exc.strerror or exc}")
            continue
        yield Delivery(item, True, str(target))


def folder_missing(path: Path) -> str | None:
    """Why a folder destination's ``path`` cannot take results, when it is not a folder."""
    if path.is_dir():
        return None
    what = "is not a folder" if path.exists() else "does not exist"
    return (
        f"folder {path} {what} (a share not mounted?): the node makes only the study folders in it"
    )
