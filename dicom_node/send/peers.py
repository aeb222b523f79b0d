"""Delivering result files: C-STORE to a DICOM peer, or a copy into a folder.

Each function takes a batch of outbox items for one destination and returns
one :class:`Delivery` per item; it never raises for a peer's failure (the
caller retries), only for a programming error.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from dicom_node.config_results import Destination
from dicom_node.models import OutboxItem

log = logging.getLogger(__name__)

# C-STORE statuses that mean "stored" (PS3.4 B.2.3 warnings: coercion, elements discarded).
SUCCESS = 0x0000
WARNINGS = frozenset({0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class Delivery:
    item: OutboxItem
    ok: bool
    detail: str  # the status or the reason


def send_dicom(
    destination: Destination,
    items: Sequence[OutboxItem],
    spool_dir: Path,
    calling_ae: str,
    timeout: float,
) -> list[Delivery]:
    """C-STORE every item over one association; each answered status is checked."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in sorted({i.sop_class_uid for i in items}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    where = f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as exc:  # e.g. a host name that does not resolve
        return [Delivery(i, False, f"cannot reach {where}: {exc}") for i in items]
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        return [Delivery(i, False, f"association to {where} {reason}") for i in items]
    results: list[Delivery] = []
    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    try:
        for item in items:
            if not assoc.is_established:
                results.append(Delivery(item, False, f"association to {where} ended"))
                continue
            if item.sop_class_uid not in accepted:
                results.append(
                    Delivery(item, False, f"{where} accepted no context for {item.sop_class_uid}")
                )
                continue
            try:
                ds = dcmread(spool_dir / item.path)
            except (OSError, InvalidDicomError) as exc:
                results.append(Delivery(item, False, f"cannot read {item.path}: {exc}"))
                continue
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError, OSError) as exc:  # e.g. no context for its syntax
                results.append(Delivery(item, False, f"cannot send to {where}: {exc}"))
                continue
            code = int(status.Status) if "Status" in status else None
            if code is None:
                results.append(Delivery(item, False, f"no C-STORE response from {where}"))
            elif code == SUCCESS or code in WARNINGS:
                if code != SUCCESS:
                    log.warning("%s stored %s with warning 0x%04X", where, item.sop_instance_uid,
                                code)  # fmt: skip
                results.append(Delivery(item, True, f"0x{code:04X}"))
            else:
                results.append(Delivery(item, False, f"{where} answered failure 0x{code:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def copy_to_folder(
    destination: Destination, items: Sequence[OutboxItem], spool_dir: Path
) -> list[Delivery]:
    """Copy each item to ``path/<study>/<sop>.dcm`` (temporary file, fsync, atomic rename)."""
    if destination.path is None:
        raise ValueError(f"destination {destination.name}: a folder destination needs a path")
    results = []
    for item in items:
        target = destination.path / item.study_uid / f"{item.sop_instance_uid}.dcm"
        source = spool_dir / item.path
        if not source.is_file():
            results.append(Delivery(item, False, f"cannot read {item.path}: no such file"))
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
            tmp.replace(target)
            results.append(Delivery(item, True, str(target)))
        except OSError as exc:
            results.append(Delivery(item, False, f"cannot write {target}: {exc.strerror or exc}"))
    return results
