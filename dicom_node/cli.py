"""``dicom-node``: the command-line interface (the only module that prints)."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node import __version__
from dicom_node.address import host_port
from dicom_node.config import ENV_CONFIG, Config, default_config_path, load_config
from dicom_node.config_checks import resolve
from dicom_node.engines_cli import ENGINE_NAMES, at_least, engine_version, pixels, positive
from dicom_node.errors import ConfigError, DicomNodeError
from dicom_node.logs import configure_logging

if TYPE_CHECKING:
    from dicom_node.models import Job
    from dicom_node.node import Node

log = logging.getLogger(__name__)

# Flags that override a key of the configuration file.
_OVERRIDES = {
    "host": "node.host",
    "port": "node.port",
    "ae_title": "node.ae_title",
    "spool_dir": "storage.spool_dir",
    "log_level": "logging.level",
    "log_format": "logging.format",
}


def _parser() -> argparse.ArgumentParser:
    # Each command takes the overriding flags of the keys it reads: the others were
    # offered, checked and dropped (engines list --port 9108 failed on metrics.port).
    # serve and check-config: all of them.
    common = argparse.ArgumentParser(add_help=False)
    # The demo chooses its own host, port and spool (loopback, a free port, under --out).
    demo_common = argparse.ArgumentParser(add_help=False)
    # studies, jobs, outbox: the spool only.
    spool_common = argparse.ArgumentParser(add_help=False)
    # engines: neither the node nor the spool.
    engines_common = argparse.ArgumentParser(add_help=False)
    every = (common, demo_common, spool_common, engines_common)
    for parent in every:
        parent.add_argument(
            "--config",
            metavar="PATH",
            help=f"configuration file (default: ${ENV_CONFIG}, else the built-in defaults)",
        )
    common.add_argument("--host", help="override node.host")
    common.add_argument("--port", type=int, help="override node.port (0 picks a free port)")
    for parent in (common, demo_common):
        parent.add_argument("--ae-title", help="override node.ae_title")
    for parent in (common, spool_common):
        parent.add_argument("--spool-dir", help="override storage.spool_dir")
    for parent in every:
        parent.add_argument("--log-level", help="override logging.level")
        parent.add_argument(
            "--log-format", choices=["plain", "json"], help="override logging.format"
        )

    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="PACS-integrated DICOM triage node for hip radiographs "
        "(research software, not for clinical use).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Also before the command (`dicom-node --config node.yaml studies`), as admins type it;
    # its own dest, so the command's --config (None when not given) does not overwrite it.
    parser.add_argument("--config", dest="config_before_command", metavar="PATH",
                        help="configuration file (also accepted after the command)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the node until SIGTERM")
    check = sub.add_parser("check-config", parents=[common], help="validate a configuration file")
    check.add_argument("path", nargs="?", help="the file to check (default: --config)")
    sub.add_parser("studies", parents=[spool_common], help="list studies with state and counts")
    jobs = sub.add_parser(
        "jobs", parents=[spool_common], help="list jobs made from completed studies"
    )
    jobs.add_argument("--summary", metavar="JOB", type=at_least(1),
                      help="print this job's summary (JSON: every hip's engine, side, AP image, "
                           "findings; the images not analysed) instead of the list")  # fmt: skip
    demo = sub.add_parser(
        "demo",
        parents=[demo_common],
        help="start a node, send six phantom studies, show the results",
        description="Start a node on 127.0.0.1 (a free port, its spool under --out), send six "
        "phantom studies and show the results.",
    )
    demo.add_argument("--out", default="var/demo",
                      help="folder for the demo's spool and files: its spool, incoming, pacs "
                           "and results folders are replaced by the next demo (a folder "
                           "holding such folders that no demo wrote is refused)")  # fmt: skip
    _engine_parsers(sub, engines_common)
    from dicom_node.outbox_cli import add_parser

    add_parser(sub, spool_common)
    return parser


def _engine_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    engines = sub.add_parser("engines", help="build, train, export and list the engines")
    # Also between `engines` and its verb (README: --config on every subcommand); its own
    # dest, as before the command.
    engines.add_argument("--config", dest="config_before_verb", metavar="PATH",
                         help="configuration file (also accepted after the verb)")  # fmt: skip
    verbs = engines.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser(
        "build", parents=[common], help="build the demo engines (trained on phantoms)"
    )
    build.add_argument("--demo", action="store_true", required=True, help="the demo profile")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--engine", action="append", choices=list(ENGINE_NAMES),
                       help="only this engine (repeatable)")  # fmt: skip
    train = verbs.add_parser("train", parents=[common], help="train one engine and package it")
    train.add_argument("name", choices=["hip_screen", "hipnet"])
    source = train.add_mutually_exclusive_group()
    source.add_argument("--phantoms", type=at_least(1), metavar="N", default=40,
                        help="train on N phantoms per class (default 40)")  # fmt: skip
    source.add_argument("--data", metavar="CSV", help="a labelled DICOM folder's CSV")
    train.add_argument("--size", type=pixels, metavar="PX",
                       help="input edge in pixels, 64-4096 (default: demo size)")  # fmt: skip
    train.add_argument("--epochs", type=at_least(1), default=4)
    train.add_argument("--batch-size", type=at_least(2), default=16)
    train.add_argument("--learning-rate", type=positive, default=2e-3)
    train.add_argument("--beta", type=float, default=0.999, help="class-balanced loss beta")
    train.add_argument("--gamma", type=float, default=2.0, help="focal loss gamma")
    train.add_argument("--attention-weight", type=float, default=1.0,
                       help="weight of the lesion attention term where masks are known "
                            "(phantoms; 0 turns it off)")  # fmt: skip
    train.add_argument("--batch-norm-items", type=at_least(0), default=128, metavar="N",
                       help="recompute BatchNorm statistics from N training items after each "
                            "epoch (0 turns it off)")  # fmt: skip
    # torch.manual_seed takes 64 bits: a larger seed failed after the phantoms were drawn.
    train.add_argument("--seed", type=at_least(0, 2**63 - 1), default=0)
    train.add_argument("--version", type=engine_version, default="1.0.0",
                       help="version written to the manifest")  # fmt: skip
    train.add_argument("--out", help="engine folder (default: <engines.cache_dir>/NAME)")
    export = verbs.add_parser(
        "export", parents=[common], help="re-export an engine's checkpoint to ONNX fp32 and fp16"
    )
    export.add_argument("name", choices=list(ENGINE_NAMES))
    export.add_argument("--checkpoint", help="a checkpoint file (default: the engine's own)")
    export.add_argument("--version", type=engine_version,
                        help="version for the manifest (default: unchanged)")  # fmt: skip
    export.add_argument(
        "--size",
        type=pixels,
        metavar="PX",
        help="input edge in pixels, 64-4096 (default: the manifest's)",
    )
    verbs.add_parser("list", parents=[common], help="list built engines with their figures")
    repo = verbs.add_parser(
        "triton-repo", parents=[common], help="write a Triton model repository of the engines"
    )
    repo.add_argument("out", help="the repository folder to write")
    repo.add_argument("--platform", choices=["onnxruntime", "tensorrt", "python"],
                      default="onnxruntime")  # fmt: skip
    repo.add_argument("--max-batch-size", type=at_least(1), default=8)
    repo.add_argument("--instance-kind", choices=["KIND_GPU", "KIND_CPU"], default=None,
                      help="where Triton runs each model (default: KIND_GPU, KIND_CPU for "
                           "--platform python); a server without a GPU needs KIND_CPU")  # fmt: skip


def _config(args: argparse.Namespace, path: str | None = None) -> Config:
    # A flag given empty (--host "") is checked like the key it overrides, and refused.
    overrides: dict[str, Any] = {
        key: getattr(args, flag)
        for flag, key in _OVERRIDES.items()
        if getattr(args, flag, None) is not None
    }
    if overrides.get("storage.spool_dir", "").strip():
        # A path on the command line means the working directory, not the config's folder;
        # ~ the home folder, as in the file (quoted, or after "=", no shell expands it).
        spool = resolve(overrides["storage.spool_dir"], Path.cwd(), "storage.spool_dir")
        overrides["storage.spool_dir"] = str(spool.resolve())
    target = _config_path(args, path)
    try:
        return load_config(default_config_path(target), overrides)
    except ConfigError as exc:
        env = os.environ.get(ENV_CONFIG)
        named = str(Path(env)) if env else ""  # as load_config names it: ./a.yaml is a.yaml
        from_flag = any(str(exc).startswith(f"{key}:") for key in overrides)
        if target is None and env and not from_flag and not str(exc).startswith(f"{named}:"):
            # A key's error named neither the file nor the variable that chose it (the
            # container images set it): the admin did not know which file to open.
            raise ConfigError(f"{named}: {exc}") from exc
        raise


def _from_environment(args: argparse.Namespace, exc: DicomNodeError) -> str:
    """Where the file came from, when no flag named it: a variable set in another shell or
    a unit file is easy to forget."""
    env = os.environ.get(ENV_CONFIG)
    if not env or not isinstance(exc, ConfigError) or not str(exc).startswith(f"{Path(env)}:"):
        return ""
    try:
        named = _config_path(args, getattr(args, "path", None))
    except ConfigError:
        return ""
    return f" (named by ${ENV_CONFIG})" if named is None else ""


def _config_path(args: argparse.Namespace, path: str | None = None) -> str | None:
    """The configuration file given on the command line: the most specific of check-config's
    PATH, --config after the command (or the engines verb), before the verb, before the
    command. An empty one is refused: ``--config "$UNSET"`` ran the node on the built-in
    defaults (port 11112 on every interface, any calling AE)."""
    for flag, value in (("PATH", path), ("--config", args.config),
                        ("--config", getattr(args, "config_before_verb", None)),
                        ("--config", args.config_before_command)):  # fmt: skip
        if value is not None:
            if not value.strip():
                raise ConfigError(f"{flag}: expected a configuration file, got {value!r}")
            return str(value)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is this handler's, below
        return code
    except BrokenPipeError:  # `dicom-node jobs | head -1`: the reader has what it wanted
        # Python would report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _error(text: str, cfg: Config | None) -> None:
    """The line saying why the command failed: in the configured log format once logging is
    set up (a JSON log pipeline dropped the one plain line that explained the exit)."""
    if cfg is not None and cfg.logging.format == "json":
        log.critical("%s", text)  # CRITICAL: shown at any configured level
    else:
        print(text, file=sys.stderr)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "outbox":
        from dicom_node.outbox_cli import take_ids

        try:
            extra = take_ids(args, extra)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument ids: {exc}")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command != "serve":
        return _command(args)
    # SIGHUP ignored from here, before the configuration and the engines load (a SIGHUP in
    # the first second killed the node, 129); Node.serve logs one once it serves.
    hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return _command(args)
    finally:
        signal.signal(signal.SIGHUP, hangup)


def _command(args: argparse.Namespace) -> int:
    logged: Config | None = None  # the config whose logging is set up, once it is
    try:
        if args.command == "check-config":
            target = _config_path(args, args.path)
            cfg = _config(args, target)
            where = default_config_path(target) or "built-in defaults"
            print(f"{where}: OK ({len(cfg.destinations)} destinations, AE {cfg.node.ae_title})")
            return 0
        cfg = _config(args)
        configure_logging(cfg.logging)
        logged = cfg
        if args.command == "serve":
            return _serve(cfg)
        if args.command == "studies":
            return _studies(cfg)
        if args.command == "jobs":
            return _jobs(cfg, args.summary)
        if args.command == "outbox":
            from dicom_node.outbox_cli import run_outbox

            return run_outbox(cfg, args)
        if args.command == "engines":
            from dicom_node.engines_cli import run_engines

            return run_engines(cfg, args)
        if args.command == "demo":
            from dicom_node.demo import run_demo

            for line in run_demo(cfg, args.out):
                print(line, flush=True)
            return 0
    except DicomNodeError as exc:
        _error(f"dicom-node: error: {exc}{_from_environment(args, exc)}", logged)
        return 2
    except BrokenPipeError:
        raise  # main's: not an error of the command
    except OSError as exc:  # a folder the command was given cannot be written, ...
        where = f": {exc.filename}" if exc.filename else ""
        _error(f"dicom-node: error: {exc.strerror or exc}{where}", logged)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in a demo or a build: a line, not a traceback
        _error("dicom-node: interrupted", logged)
        return 130
    return 2  # pragma: no cover - argparse requires a command


def _serve(cfg: Config) -> int:
    from dicom_node.node import Node

    node = Node(cfg)
    try:
        code = node.serve()
        _exit_without_lingering_threads(code, node.left_running)
        return code
    except DicomNodeError:
        raise  # main's own message (a SpoolError is an OSError too)
    except OSError as exc:
        why = _start_failure(cfg, node, exc)
        node.stop(drain_seconds=0)  # what started before the failure (HTTP, sender, ...)
        _error(f"dicom-node: error: {why}", cfg)
        return 2


def _exit_without_lingering_threads(code: int, left_running: Sequence[str] = ()) -> None:
    """Exit now if a thread outlived the stop. pynetdicom's association threads are not
    daemons: one still in a C-STORE or C-ECHO to a silent PACS kept the process alive for
    up to sending.timeout_seconds after the node had stopped, past a second signal's 'at
    once' and a service manager's stop timeout. The state is closed by then; an object
    whose C-STORE was cut is sent again at the next start (same UID: the PACS keeps one).
    So too when the stop left a worker of the node running (``left_running``: a job still
    in an engine after a second signal): the interpreter's teardown under a thread inside
    onnxruntime aborted the process (exit 134, a core dump, "terminate called")."""
    left = [t.name for t in threading.enumerate()
            if t.is_alive() and not t.daemon and t is not threading.main_thread()]  # fmt: skip
    if not left and not left_running:
        return
    if left:
        log.warning("exiting without %d thread(s) still in a network call: %s", len(left),
                    ", ".join(sorted(left)))  # fmt: skip
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _start_failure(cfg: Config, node: Node, exc: OSError) -> str:
    """One line for an OSError from ``Node.start``, naming the address and its key if a bind
    failed (``Node.binding``: the start binds metrics first, the DICOM port last)."""
    reason = exc.strerror or str(exc)
    binding_metrics = node.binding == "metrics"
    binding_dicom = node.binding == "dicom"
    if isinstance(exc, socket.gaierror):  # the host name did not resolve
        if binding_metrics:
            return f"metrics.host: cannot resolve {cfg.metrics.host!r} ({reason})"
        if binding_dicom:
            return f"node.host: cannot resolve {cfg.node.host!r} ({reason})"
    if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
        if binding_metrics:
            where = host_port(cfg.metrics.host, cfg.metrics.port)
            return f"metrics.port: cannot listen on {where} ({reason})"
        if binding_dicom:
            where = host_port(cfg.node.host, cfg.node.port)
            return f"node.port: cannot listen on {where} ({reason})"
    return f"cannot start the node: {exc}"


def _time(value: float | None) -> str:
    return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _open_state(cfg: Config) -> Any:
    from dicom_node.state import State

    if not cfg.storage.database.exists():
        return None
    return State(cfg.storage.database, cfg.assembly, readonly=True)


def _partial(job: Job) -> str | None:
    """A done job whose report is PARTIAL: how many images were left out (a PARTIAL
    study read as a clean success in the list)."""
    if job.summary is None:
        return None
    left_out = json.loads(job.summary).get("not_analysed", [])
    if not left_out:
        return None
    return f"PARTIAL: {len(left_out)} not analysed (jobs --summary {job.id})"


def _studies(cfg: Config) -> int:
    state = _open_state(cfg)
    if state is None:
        print(f"no state database at {cfg.storage.database}: the node has not run yet")
        return 0
    try:
        rows = state.studies()
    finally:
        state.close()
    print(f"{'STUDY INSTANCE UID':<64}  {'STATE':<9}  {'INST':>5}  {'EPISODE STARTED':<19}  "
          f"{'LAST RECEIVED':<19}  {'COMPLETED':<19}  {'N':>2}  {'REASON':<8}  "
          "PURGED")  # fmt: skip
    for s in rows:
        print(
            f"{s.study_uid:<64}  {s.state:<9}  {s.instance_count:>5}  "
            f"{_time(s.first_received_at):<19}  {_time(s.last_received_at):<19}  "
            f"{_time(s.completed_at):<19}  {s.completions:>2}  {s.completion_reason or '-':<8}  "
            f"{_time(s.purged_at)}"
        )
    print(f"{len(rows)} studies")
    return 0


def _jobs(cfg: Config, summary_of: int | None = None) -> int:
    state = _open_state(cfg)
    if state is None:
        print(f"no state database at {cfg.storage.database}: the node has not run yet")
        return 0
    try:
        if summary_of is not None:  # a StateError names a job that is not there
            job = state.job(summary_of)
            if job.summary is None:
                print(f"job {job.id} is {job.state}: no summary ({job.error or 'not run yet'})")
            else:
                print(json.dumps(json.loads(job.summary), indent=2, sort_keys=True))
            return 0
        rows = state.jobs()
    finally:
        state.close()
    print(f"{'JOB':>5}  {'STUDY INSTANCE UID':<64}  {'GEN':>3}  {'STATE':<8}  {'INST':>5}  "
          f"{'CREATED':<19}  {'PRIORITY':<8}  {'REASON':<8}  ERROR")  # fmt: skip
    for j in rows:
        print(
            f"{j.id:>5}  {j.study_uid:<64}  {j.generation:>3}  {j.state:<8}  "
            f"{j.instance_count:>5}  {_time(j.created_at):<19}  {j.priority or '-':<8}  "
            f"{j.reason:<8}  {j.error or _partial(j) or '-'}"
        )
    print(f"{len(rows)} jobs")
    return 0
