"""The node's one validated configuration.

``config.yaml`` at the project root documents every key with its default; the
defaults below are the same values (a test keeps the two in step). A file is
read once, merged over the defaults, overridden by command-line flags, and
validated into frozen dataclasses. Every error names the key path and the bad
value, e.g. ``node.port: expected an integer from 0 to 65535, got 70000``.
Relative paths in a file are resolved against the file's directory.
"""

from __future__ import annotations

import copy
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dicom_node.config_checks import (
    as_ae_title,
    as_bool,
    as_host,
    as_list,
    as_str,
    exponent_hint,
    folder,
    get_key,
    int_range,
    known,
    non_negative,
    opt_path,
    pdu,
    positive,
    set_dotted,
    show,
    sub_mapping,
)
from dicom_node.config_results import (
    Destination,
    ResultsConfig,
    RoutingConfig,
    SendingConfig,
    TriageConfig,
    parse_destinations,
    parse_results,
    parse_routing,
    parse_sending,
    parse_triage,
)
from dicom_node.errors import ConfigError, not_utf8
from engines.catalog import ENGINES

ENV_CONFIG = "DICOM_NODE_CONFIG"


@dataclass(frozen=True)
class TlsConfig:
    """TLS for incoming associations; enabled when certificate and key are set."""

    certificate: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_certificate: bool = False

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str = "TRIAGE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = ()
    require_called_ae: bool = True
    max_associations: int = 10
    max_pdu: int = 262144
    max_instance_bytes: int = 2 * 1024**3
    network_timeout_seconds: float = 60.0
    acse_timeout_seconds: float = 10.0
    drain_seconds: float = 30.0
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class StorageConfig:
    spool_dir: Path = Path("var/spool")
    min_free_bytes: int = 1024**3
    # A finished study's files leave the spool this long after it finished; None keeps all.
    retention_hours: float | None = 72.0

    @property
    def database(self) -> Path:
        """The SQLite state (instances, studies, jobs) lives beside the spool it indexes."""
        return self.spool_dir / "state.sqlite3"


@dataclass(frozen=True)
class AssemblyConfig:
    quiet_seconds: float = 2.0
    after_release_seconds: float = 0.5
    max_wait_seconds: float = 600.0


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9108
    echo_interval_seconds: float = 30.0


@dataclass(frozen=True)
class TritonConfig:
    url: str = "127.0.0.1:8001"
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class EnginesConfig:
    backend: str = "auto"
    cache_dir: Path = Path("var/engines")
    precision: str = "fp32"
    threads: int = 0
    triton: TritonConfig = field(default_factory=TritonConfig)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    format: str = "plain"


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    triage: TriageConfig = field(default_factory=TriageConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    sending: SendingConfig = field(default_factory=SendingConfig)
    destinations: tuple[Destination, ...] = ()
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    engines: EnginesConfig = field(default_factory=EnginesConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# --- reading -----------------------------------------------------------------


def default_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The file to read: the ``--config`` value, else ``$DICOM_NODE_CONFIG``, else none."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG)
    return Path(env) if env else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read ``path`` (or only the defaults), apply dotted-key ``overrides``, validate."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read configuration file ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: {not_utf8(exc)}; save it as UTF-8") from exc
        try:
            loaded = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}{_yaml_problem(exc)}") from exc
        except (ValueError, TypeError, OverflowError) as exc:
            # PyYAML's constructors: a date that does not exist (2001-02-30), `!!int abc`.
            raise ConfigError(f"{file}: not valid YAML ({exc})") from exc
        except RecursionError:  # PyYAML's composer recurses: a value nested ~500 deep
            raise ConfigError(f"{file}: not valid YAML (nested too deeply)") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level, got {show(loaded)}")
        raw = loaded
        base = file.resolve().parent
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(raw, dotted, value)
    return parse_config(raw, base)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error as one line after the file name, ``:LINE:COLUMN: not valid YAML (what)``;
    its own text ran over 4-8 lines quoting the line, and named the file
    '<unicode string>'."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character, as a NUL
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a byte"
        return (
            f": not valid YAML (unacceptable character {character} at character "
            f"{exc.position + 1}: {exc.reason})"
        )
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f": not valid YAML ({' '.join(str(exc).split())})"
    mark = exc.problem_mark or exc.context_mark
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    what = "; ".join(" ".join(p.split()) for p in (exc.context, exc.problem) if p)
    return f"{where}: not valid YAML ({what or 'a syntax error'})"


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: PyYAML keeps the last, so
    a second `node:` block at the end of the file would silently drop the first (its
    calling-AE allow-list, its spool folder)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # `<<: *defaults`: merged by SafeLoader (flatten_mapping), and a key given
                # beside it overrides the merged one, as YAML means it to.
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key!r} given twice (lines {seen[key]} and {line}); the second "
                    "would replace the first",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_leading_zero_int(self, node: yaml.ScalarNode) -> int:
        """YAML 1.1 reads 0104 as octal (68), and 72:00 as base 60 (4320): a zero-padded
        port listened on, or sent to, another port, and 72 hours of retention kept 180 days,
        without a word. Refused, where the file says it."""
        text = str(self.construct_scalar(node)).replace("_", "")
        _not_base_60(node, text, self.construct_yaml_int)
        if re.fullmatch(r"[-+]?0[0-9]+", text):
            raise yaml.constructor.ConstructorError(
                None, None,
                # Only octal digits reach here (YAML 1.1 takes 0109 for text).
                f"{text} has a leading 0, which YAML reads as octal ({int(text, 8)}); write "
                "it without the 0 (or quote it where text is meant)",
                node.start_mark,
            )  # fmt: skip
        value: int = self.construct_yaml_int(node)
        return value

    def construct_plain_float(self, node: yaml.ScalarNode) -> float:
        """YAML 1.1 reads 1:30.5 as base 60 (90.5): refused, as for integers."""
        _not_base_60(node, str(self.construct_scalar(node)), self.construct_yaml_float)
        value: float = self.construct_yaml_float(node)
        return value


def _not_base_60(node: yaml.ScalarNode, text: str, read: Callable[[Any], object]) -> None:
    """Refuse a number YAML 1.1 reads in base 60 (72:00 is 4320), naming what it read."""
    if ":" in text:
        raise yaml.constructor.ConstructorError(
            None, None,
            f"{text} is a base-60 number to YAML ({read(node)}); write the plain number (or "
            "quote it where text is meant)",
            node.start_mark,
        )  # fmt: skip


_UniqueKeyLoader.add_constructor(
    "tag:yaml.org,2002:int", _UniqueKeyLoader.construct_leading_zero_int
)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _UniqueKeyLoader.construct_plain_float)


def parse_config(raw: Mapping[str, Any], base: Path | None = None) -> Config:
    """Validate a plain mapping (as YAML gives it) into a :class:`Config`."""
    base = base or Path.cwd()
    known(raw, "", set(Config.__dataclass_fields__))
    engine_names = tuple(ENGINES)
    storage = _storage(sub_mapping(raw, "storage"), base)
    destinations = parse_destinations(raw.get("destinations", []), base)
    _outside_the_spool(destinations, storage.spool_dir)
    node = _node(sub_mapping(raw, "node"), base)
    metrics = _metrics(sub_mapping(raw, "metrics"))
    _apart(node, metrics)
    return Config(
        node=node,
        storage=storage,
        assembly=_assembly(sub_mapping(raw, "assembly")),
        routing=parse_routing(sub_mapping(raw, "routing"), engine_names),
        triage=parse_triage(sub_mapping(raw, "triage"), engine_names),
        results=parse_results(sub_mapping(raw, "results")),
        sending=parse_sending(sub_mapping(raw, "sending")),
        destinations=destinations,
        metrics=metrics,
        engines=_engines(sub_mapping(raw, "engines"), base),
        logging=_logging(sub_mapping(raw, "logging")),
    )


_ANY_HOST = ("0.0.0.0", "::", "")


def _apart(node: NodeConfig, metrics: MetricsConfig) -> None:
    """The DICOM listener and the HTTP endpoints cannot share a port on one address: the
    second to bind would fail, blaming a port 'already in use' by the node itself. One
    address may be spelled two ways (localhost, 127.0.0.1): both are resolved."""
    if not node.port or node.port != metrics.port:
        return
    same_host = (
        node.host == metrics.host
        or {node.host, metrics.host} & set(_ANY_HOST)
        or _addresses(node.host) & _addresses(metrics.host)
    )
    if same_host:
        raise ConfigError(
            f"metrics.port: must differ from node.port ({node.port}) on the same address "
            f"(node.host {node.host}, metrics.host {metrics.host}), got {metrics.port}"
        )


def _addresses(host: str) -> set[str]:
    """The addresses ``host`` names (itself when it does not resolve: then the bind fails
    with its own message)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return {host}


def _outside_the_spool(destinations: tuple[Destination, ...], spool_dir: Path) -> None:
    """A folder destination inside the spool would have its deliveries purged with it."""
    spool = spool_dir.resolve()
    for i, dest in enumerate(destinations):
        if dest.path is not None and dest.path.resolve().is_relative_to(spool):
            raise ConfigError(
                f"destinations[{i}].path: must be outside storage.spool_dir ({spool_dir}), whose "
                f"folders the retention purges, got {str(dest.path)!r}"
            )


def _node(raw: Mapping[str, Any], base: Path) -> NodeConfig:
    d = NodeConfig()
    known(raw, "node", set(d.__dataclass_fields__))
    tls_raw = sub_mapping(raw, "tls", "node.tls")
    known(tls_raw, "node.tls", set(TlsConfig.__dataclass_fields__))
    tls = TlsConfig(
        certificate=opt_path(tls_raw, "certificate", "node.tls", base),
        key=opt_path(tls_raw, "key", "node.tls", base),
        ca=opt_path(tls_raw, "ca", "node.tls", base),
        require_client_certificate=get_key(
            tls_raw, "require_client_certificate", "node.tls", False, as_bool
        ),
    )
    if (tls.certificate is None) != (tls.key is None):
        raise ConfigError(
            "node.tls: certificate and key must be given together, got "
            f"certificate={_shown_path(tls.certificate)} key={_shown_path(tls.key)}"
        )
    if tls.require_client_certificate and tls.ca is None:
        raise ConfigError(
            "node.tls.ca: required when node.tls.require_client_certificate is true, got null"
        )
    if tls.ca is not None and not tls.enabled:
        raise ConfigError(f"node.tls.ca: needs node.tls.certificate and key, got ca={tls.ca}")
    allowed: list[Any] = get_key(raw, "allowed_calling_aes", "node", [], as_list)
    return NodeConfig(
        ae_title=get_key(raw, "ae_title", "node", d.ae_title, as_ae_title),
        host=get_key(raw, "host", "node", d.host, as_host),
        port=get_key(raw, "port", "node", d.port, int_range(0, 65535)),
        allowed_calling_aes=tuple(
            as_ae_title(v, f"node.allowed_calling_aes[{i}]") for i, v in enumerate(allowed)
        ),
        require_called_ae=get_key(raw, "require_called_ae", "node", d.require_called_ae, as_bool),
        max_associations=get_key(
            raw, "max_associations", "node", d.max_associations, int_range(1, 1000)
        ),
        # 0 means unlimited in DICOM; otherwise PS3.8 needs at least the smallest useful PDU.
        max_pdu=get_key(raw, "max_pdu", "node", d.max_pdu, pdu),
        max_instance_bytes=get_key(
            raw, "max_instance_bytes", "node", d.max_instance_bytes, int_range(1024, 2**40)
        ),
        network_timeout_seconds=get_key(
            raw, "network_timeout_seconds", "node", d.network_timeout_seconds, positive
        ),
        acse_timeout_seconds=get_key(
            raw, "acse_timeout_seconds", "node", d.acse_timeout_seconds, positive
        ),
        drain_seconds=get_key(raw, "drain_seconds", "node", d.drain_seconds, non_negative),
        tls=tls,
    )


def _storage(raw: Mapping[str, Any], base: Path) -> StorageConfig:
    d = StorageConfig()
    known(raw, "storage", {"spool_dir", "min_free_bytes", "retention_hours"})
    spool = get_key(raw, "spool_dir", "storage", str(d.spool_dir), as_str)
    return StorageConfig(
        spool_dir=folder(spool, base, "storage.spool_dir"),
        min_free_bytes=get_key(
            raw, "min_free_bytes", "storage", d.min_free_bytes, int_range(0, 2**62)
        ),
        retention_hours=get_key(
            raw, "retention_hours", "storage", d.retention_hours, _hours_or_none
        ),
    )


# A century: more is a typo (and 1e306 hours made the retention interval infinite).
MAX_RETENTION_HOURS = 876_000


def _hours_or_none(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_RETENTION_HOURS  # also NaN; a huge int without OverflowError
    ):
        raise ConfigError(
            f"{path}: expected a number of hours from 0 to {MAX_RETENTION_HOURS} (a century) "
            f"or null (keep forever), got {show(value)}{exponent_hint(value)}"
        )
    return float(value)


def _assembly(raw: Mapping[str, Any]) -> AssemblyConfig:
    d = AssemblyConfig()
    known(raw, "assembly", set(d.__dataclass_fields__))
    cfg = AssemblyConfig(
        quiet_seconds=get_key(raw, "quiet_seconds", "assembly", d.quiet_seconds, positive),
        after_release_seconds=get_key(
            raw, "after_release_seconds", "assembly", d.after_release_seconds, non_negative
        ),
        max_wait_seconds=get_key(raw, "max_wait_seconds", "assembly", d.max_wait_seconds, positive),
    )
    if cfg.after_release_seconds > cfg.quiet_seconds:
        raise ConfigError(
            "assembly.after_release_seconds: must not exceed assembly.quiet_seconds "
            f"({cfg.quiet_seconds}), got {cfg.after_release_seconds}"
        )
    if cfg.max_wait_seconds < cfg.quiet_seconds:
        raise ConfigError(
            "assembly.max_wait_seconds: must be at least assembly.quiet_seconds "
            f"({cfg.quiet_seconds}), got {cfg.max_wait_seconds}"
        )
    return cfg


def _metrics(raw: Mapping[str, Any]) -> MetricsConfig:
    d = MetricsConfig()
    known(raw, "metrics", set(d.__dataclass_fields__))
    return MetricsConfig(
        host=get_key(raw, "host", "metrics", d.host, as_host),
        port=get_key(raw, "port", "metrics", d.port, int_range(0, 65535)),
        echo_interval_seconds=get_key(
            raw, "echo_interval_seconds", "metrics", d.echo_interval_seconds, positive
        ),
    )


ENGINE_BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt", "triton")


def _engines(raw: Mapping[str, Any], base: Path) -> EnginesConfig:
    d = EnginesConfig()
    known(raw, "engines", set(d.__dataclass_fields__))
    backend = get_key(raw, "backend", "engines", d.backend, as_str)
    if backend not in ENGINE_BACKENDS:
        raise ConfigError(
            f"engines.backend: expected one of {', '.join(ENGINE_BACKENDS)}, got {backend!r}"
        )
    precision = get_key(raw, "precision", "engines", d.precision, as_str)
    if precision not in {"fp32", "fp16"}:
        raise ConfigError(f"engines.precision: expected 'fp32' or 'fp16', got {precision!r}")
    triton_raw = sub_mapping(raw, "triton", "engines.triton")
    known(triton_raw, "engines.triton", set(TritonConfig.__dataclass_fields__))
    url = get_key(triton_raw, "url", "engines.triton", d.triton.url, as_str)
    match = re.fullmatch(r"[A-Za-z0-9_.-]+:(\d{1,5})", url)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise ConfigError(
            f"engines.triton.url: expected HOST:PORT (gRPC, a port from 1 to 65535), got {url!r}"
        )
    cache_dir = get_key(raw, "cache_dir", "engines", str(d.cache_dir), as_str)
    return EnginesConfig(
        backend=backend,
        cache_dir=folder(cache_dir, base, "engines.cache_dir"),
        precision=precision,
        threads=get_key(raw, "threads", "engines", d.threads, int_range(0, 256)),
        triton=TritonConfig(
            url=url,
            timeout_seconds=get_key(
                triton_raw, "timeout_seconds", "engines.triton", d.triton.timeout_seconds, positive
            ),
        ),
    )


def _logging(raw: Mapping[str, Any]) -> LoggingConfig:
    d = LoggingConfig()
    known(raw, "logging", set(d.__dataclass_fields__))
    given = get_key(raw, "level", "logging", d.level, as_str)
    level = given.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(
            f"logging.level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {given!r}"
        )
    fmt = get_key(raw, "format", "logging", d.format, as_str)
    if fmt not in {"plain", "json"}:
        raise ConfigError(f"logging.format: expected 'plain' or 'json', got {fmt!r}")
    return LoggingConfig(level=level, format=fmt)


def _shown_path(path: Path | None) -> str:
    """A path in an error as the admin wrote it (not PosixPath('...'))."""
    return "null" if path is None else repr(str(path))
