"""``dicom-node outbox``: what waits to be sent, dead letters, and requeueing them.

Works on the state database directly, so it can run beside a running node (SQLite
WAL); the node's sender picks requeued items up within a second.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dicom_node.config import Config
from dicom_node.config_results import Destination
from dicom_node.errors import DicomNodeError
from dicom_node.models import OutboxItem
from dicom_node.send.outbox import STATES, Outbox
from dicom_node.send.peers import copy_to_folder
from dicom_node.state import State


class OutboxCommandError(DicomNodeError, ValueError):
    """An outbox command that cannot do what was asked (an unknown id, nothing to act on)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:  # fmt: skip
    outbox = sub.add_parser(
        "outbox",
        parents=[common],
        help="list results waiting to be sent and dead letters; `outbox retry` requeues, "
        "`outbox discard ID...` gives up on dead letters",
    )
    outbox.add_argument("verb", nargs="?", choices=["list", "retry", "discard"], default="list",
                        help="list (default), retry (requeue dead letters) or discard "
                             "(give up on the named dead letters)")  # fmt: skip
    outbox.add_argument("ids", nargs="*", type=_item_id,
                        help="list: only these items; retry: item ids (default: every dead "
                             "letter); discard: the item ids (required)")  # fmt: skip
    outbox.add_argument("--state", action="append", choices=STATES,
                        help="list: only this state (repeatable)")  # fmt: skip
    outbox.add_argument("--copy-to", metavar="DIR", type=Path,
                        help="discard: first copy each result's file to DIR/<study>/<sop>.dcm, "
                             "to deliver it by hand (the files leave the spool with their "
                             "study, as soon as the next purge round)")  # fmt: skip


def take_ids(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Add the item ids argparse left over to ``args.ids``; return the rest.

    argparse takes an option's positionals only before the first option after them:
    `outbox retry --config PATH 12 13` left 12 and 13 "unrecognized" (README: --config goes
    before or after the subcommand).
    """
    rest = []
    for text in extra:
        if text.startswith("-"):
            rest.append(text)
        else:
            args.ids.append(_item_id(text))
    return rest


def _item_id(text: str) -> int:
    """An outbox item id: a positive SQLite integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an item id, got {text!r}") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an item id from 1 to 2^63-1, got {text}")
    return value


def _time(value: float | None) -> str:
    return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def run_outbox(cfg: Config, args: argparse.Namespace) -> int:
    # Errors are raised for the CLI to report (as a JSON line with --log-format json; they
    # were printed here, plain, whatever the format).
    if args.state and args.verb != "list":
        # It was ignored: `retry --state sent` requeued every dead letter.
        raise OutboxCommandError(f"--state: only for list ({args.verb} acts on dead letters)")
    if args.copy_to is not None and args.verb != "discard":
        raise OutboxCommandError(f"--copy-to: only for discard, got {args.verb}")
    if not cfg.storage.database.exists():
        if args.verb in ("retry", "discard"):
            # Nothing could be requeued or discarded: a script must not take this for success.
            raise OutboxCommandError(
                f"no state database at {cfg.storage.database}: "
                f"nothing to {args.verb} (the node has not run yet)"
            )
        print(f"no state database at {cfg.storage.database}: the node has not run yet")
        return 0
    listing = args.verb == "list"
    state = State(cfg.storage.database, cfg.assembly, readonly=listing, create=False)
    try:
        outbox = Outbox(state, cfg.sending)
        if args.verb in ("retry", "discard"):
            discarded = []
            if args.verb == "retry":  # a StateError names the ids that are not dead letters
                count = outbox.retry(time.time(), args.ids)
            else:
                if args.copy_to is not None:
                    _copy_out(outbox, args.ids, cfg.storage.spool_dir, args.copy_to)
                discarded = outbox.discard(args.ids)
                count = len(discarded)
            done = "requeued" if args.verb == "retry" else "discarded"
            print(f"{done} {count} dead letter{'s' if count != 1 else ''}")
            for item in discarded:
                print(f"  {item.id}: {cfg.storage.spool_dir / item.path}")
            if args.copy_to is not None:
                print(f"copied first to {args.copy_to}/<study>/<sop>.dcm")
            elif discarded and cfg.storage.retention_hours is not None:
                # A study finished long ago leaves at the next round: within a minute, or a
                # second (the paths came after the rows were gone: too late to copy them).
                print(
                    "their files leave the spool with their study: at the purge's next round "
                    f"if it finished more than {cfg.storage.retention_hours:g} h ago (seconds "
                    "away): to deliver results by hand, discard with --copy-to DIR"
                )
            return 0
        # With ids, those items whatever their state; else pending and dead (or --state).
        items = outbox.items(args.state or (STATES if args.ids else ("pending", "dead")))
        if args.ids:
            items = [i for i in items if i.id in set(args.ids)]
        depth = outbox.depth()
    finally:
        state.close()
    missing = sorted(set(args.ids) - {i.id for i in items})
    if missing:  # as retry and discard say: a script must tell "not found" from "nothing"
        where = f" in state {', '.join(args.state)}" if args.state else ""
        raise OutboxCommandError(f"no outbox item with id {', '.join(map(str, missing))}{where}")
    for line in _table(items):
        print(line)
    print(", ".join(f"{n} {s}" for s, n in depth.items()))
    return 0


def _copy_out(outbox: Outbox, ids: list[int], spool: Path, target: Path) -> None:
    """Copy the named dead letters' files to ``target``/<study>/<sop>.dcm before they are
    discarded, as a folder destination writes (temporary file, fsync, rename, folder
    fsync: a plain copy could be empty after a power cut, with the row gone and the
    original purged; one cut short left a truncated file under the result's name; a link
    planted there was written through). Any that cannot be copied stops the discard."""
    if not target.is_dir():
        raise OutboxCommandError(f"--copy-to: expected an existing folder, got {str(target)!r}")
    dead = {item.id: item for item in outbox.items(("dead",))}
    items = [dead[i] for i in ids if i in dead]  # discard names the others, discarding none
    folder = Destination(name="--copy-to", type="folder", path=target)
    for delivery in copy_to_folder(folder, items, spool):
        if not delivery.ok:
            raise OutboxCommandError(
                f"--copy-to: dead letter {delivery.item.id} not copied ({delivery.detail}); "
                "nothing discarded"
            )


_KINDS = {"1.2.840.10008.5.1.4.1.1.88.34": "SR", "1.2.840.10008.5.1.4.1.1.7": "SC"}


def _table(items: list[OutboxItem]) -> list[str]:
    """One line per item: WHEN is the next attempt of a pending item, the delivery of a sent
    one; the study says whose result it is (UIDs only, no patient data)."""
    dest = max([4, *(len(i.destination) for i in items)])
    lines = [f"{'ID':>5}  {'STATE':<7}  {'DEST':<{dest}}  {'KIND':<4}  {'TRIES':>5}  "
             f"{'WHEN':<19}  {'STUDY INSTANCE UID':<64}  {'SOP INSTANCE UID':<64}  "
             "LAST ERROR"]  # fmt: skip
    for item in items:
        when = {"pending": item.next_attempt_at, "sent": item.sent_at}.get(item.state)
        lines.append(
            f"{item.id:>5}  {item.state:<7}  {item.destination:<{dest}}  "
            f"{_KINDS.get(item.sop_class_uid, '?'):<4}  {item.attempts:>5}  {_time(when):<19}  "
            f"{item.study_uid:<64}  {item.sop_instance_uid:<64}  {item.last_error or '-'}"
        )
    return lines
