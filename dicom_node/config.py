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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dicom_node.errors import ConfigError

ENV_CONFIG = "DICOM_NODE_CONFIG"

_AE_TITLE = re.compile(
    r"^[\x20-\x5b\x5d-\x7e]{1,16}$"
)  # default character repertoire, no backslash
_T = TypeVar("_T")


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

    @property
    def database(self) -> Path:
        """The SQLite state (instances, studies, jobs) lives beside the spool it indexes."""
        return self.spool_dir / "state.sqlite3"


@dataclass(frozen=True)
class AssemblyConfig:
    quiet_seconds: float = 5.0
    after_release_seconds: float = 1.0
    max_wait_seconds: float = 600.0


@dataclass(frozen=True)
class Destination:
    name: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9108


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
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level, got {_show(loaded)}")
        raw = loaded
        base = file.resolve().parent
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    return parse_config(raw, base)


def parse_config(raw: Mapping[str, Any], base: Path | None = None) -> Config:
    """Validate a plain mapping (as YAML gives it) into a :class:`Config`."""
    base = base or Path.cwd()
    _known(
        raw, "", {"node", "storage", "assembly", "destinations", "metrics", "engines", "logging"}
    )
    return Config(
        node=_node(_mapping(raw, "node"), base),
        storage=_storage(_mapping(raw, "storage"), base),
        assembly=_assembly(_mapping(raw, "assembly")),
        destinations=_destinations(raw.get("destinations", [])),
        metrics=_metrics(_mapping(raw, "metrics")),
        engines=_engines(_mapping(raw, "engines"), base),
        logging=_logging(_mapping(raw, "logging")),
    )


def _node(raw: Mapping[str, Any], base: Path) -> NodeConfig:
    d = NodeConfig()
    _known(raw, "node", set(d.__dataclass_fields__))
    tls_raw = _mapping(raw, "tls", "node.tls")
    _known(tls_raw, "node.tls", set(TlsConfig.__dataclass_fields__))
    tls = TlsConfig(
        certificate=_opt_path(tls_raw, "certificate", "node.tls", base),
        key=_opt_path(tls_raw, "key", "node.tls", base),
        ca=_opt_path(tls_raw, "ca", "node.tls", base),
        require_client_certificate=_get(
            tls_raw, "require_client_certificate", "node.tls", False, _bool
        ),
    )
    if (tls.certificate is None) != (tls.key is None):
        raise ConfigError(
            "node.tls: certificate and key must be given together, got "
            f"certificate={_show(tls.certificate)} key={_show(tls.key)}"
        )
    if tls.require_client_certificate and tls.ca is None:
        raise ConfigError(
            "node.tls.ca: required when node.tls.require_client_certificate is true, got null"
        )
    if tls.ca is not None and not tls.enabled:
        raise ConfigError(f"node.tls.ca: needs node.tls.certificate and key, got ca={tls.ca}")
    allowed: list[Any] = _get(raw, "allowed_calling_aes", "node", [], _list)
    return NodeConfig(
        ae_title=_get(raw, "ae_title", "node", d.ae_title, _ae_title),
        host=_get(raw, "host", "node", d.host, _host),
        port=_get(raw, "port", "node", d.port, _int_range(0, 65535)),
        allowed_calling_aes=tuple(
            _ae_title(v, f"node.allowed_calling_aes[{i}]") for i, v in enumerate(allowed)
        ),
        require_called_ae=_get(raw, "require_called_ae", "node", d.require_called_ae, _bool),
        max_associations=_get(
            raw, "max_associations", "node", d.max_associations, _int_range(1, 1000)
        ),
        # 0 means unlimited in DICOM; otherwise PS3.8 needs at least the smallest useful PDU.
        max_pdu=_get(raw, "max_pdu", "node", d.max_pdu, _pdu),
        max_instance_bytes=_get(
            raw, "max_instance_bytes", "node", d.max_instance_bytes, _int_range(1024, 2**40)
        ),
        network_timeout_seconds=_get(
            raw, "network_timeout_seconds", "node", d.network_timeout_seconds, _positive
        ),
        acse_timeout_seconds=_get(
            raw, "acse_timeout_seconds", "node", d.acse_timeout_seconds, _positive
        ),
        drain_seconds=_get(raw, "drain_seconds", "node", d.drain_seconds, _non_negative),
        tls=tls,
    )


def _storage(raw: Mapping[str, Any], base: Path) -> StorageConfig:
    d = StorageConfig()
    _known(raw, "storage", {"spool_dir", "min_free_bytes"})
    spool = _get(raw, "spool_dir", "storage", str(d.spool_dir), _str)
    return StorageConfig(
        spool_dir=_resolve(spool, base),
        min_free_bytes=_get(
            raw, "min_free_bytes", "storage", d.min_free_bytes, _int_range(0, 2**62)
        ),
    )


def _assembly(raw: Mapping[str, Any]) -> AssemblyConfig:
    d = AssemblyConfig()
    _known(raw, "assembly", set(d.__dataclass_fields__))
    cfg = AssemblyConfig(
        quiet_seconds=_get(raw, "quiet_seconds", "assembly", d.quiet_seconds, _positive),
        after_release_seconds=_get(
            raw, "after_release_seconds", "assembly", d.after_release_seconds, _non_negative
        ),
        max_wait_seconds=_get(raw, "max_wait_seconds", "assembly", d.max_wait_seconds, _positive),
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


def _destinations(value: Any) -> tuple[Destination, ...]:
    items = _list(value, "destinations")
    result: list[Destination] = []
    for i, item in enumerate(items):
        path = f"destinations[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_show(item)}")
        _known(item, path, {"name", "ae_title", "host", "port"})
        for key in ("name", "ae_title", "host", "port"):
            if key not in item:
                raise ConfigError(f"{path}.{key}: required, got nothing")
        dest = Destination(
            name=_get(item, "name", path, "", _name),
            ae_title=_get(item, "ae_title", path, "", _ae_title),
            host=_get(item, "host", path, "", _host),
            port=_get(item, "port", path, 0, _int_range(1, 65535)),
        )
        if any(d.name == dest.name for d in result):
            raise ConfigError(f"{path}.name: duplicate destination name, got {dest.name!r}")
        result.append(dest)
    return tuple(result)


def _metrics(raw: Mapping[str, Any]) -> MetricsConfig:
    d = MetricsConfig()
    _known(raw, "metrics", set(d.__dataclass_fields__))
    return MetricsConfig(
        host=_get(raw, "host", "metrics", d.host, _host),
        port=_get(raw, "port", "metrics", d.port, _int_range(0, 65535)),
    )


ENGINE_BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt", "triton")


def _engines(raw: Mapping[str, Any], base: Path) -> EnginesConfig:
    d = EnginesConfig()
    _known(raw, "engines", set(d.__dataclass_fields__))
    backend = _get(raw, "backend", "engines", d.backend, _str)
    if backend not in ENGINE_BACKENDS:
        raise ConfigError(
            f"engines.backend: expected one of {', '.join(ENGINE_BACKENDS)}, got {backend!r}"
        )
    precision = _get(raw, "precision", "engines", d.precision, _str)
    if precision not in {"fp32", "fp16"}:
        raise ConfigError(f"engines.precision: expected 'fp32' or 'fp16', got {precision!r}")
    triton_raw = _mapping(raw, "triton", "engines.triton")
    _known(triton_raw, "engines.triton", set(TritonConfig.__dataclass_fields__))
    url = _get(triton_raw, "url", "engines.triton", d.triton.url, _str)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+:\d{1,5}", url):
        raise ConfigError(f"engines.triton.url: expected HOST:PORT (gRPC), got {url!r}")
    return EnginesConfig(
        backend=backend,
        cache_dir=_resolve(_get(raw, "cache_dir", "engines", str(d.cache_dir), _str), base),
        precision=precision,
        threads=_get(raw, "threads", "engines", d.threads, _int_range(0, 256)),
        triton=TritonConfig(
            url=url,
            timeout_seconds=_get(
                triton_raw, "timeout_seconds", "engines.triton", d.triton.timeout_seconds, _positive
            ),
        ),
    )


def _logging(raw: Mapping[str, Any]) -> LoggingConfig:
    d = LoggingConfig()
    _known(raw, "logging", set(d.__dataclass_fields__))
    level = _get(raw, "level", "logging", d.level, _str).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(
            f"logging.level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {level!r}"
        )
    fmt = _get(raw, "format", "logging", d.format, _str)
    if fmt not in {"plain", "json"}:
        raise ConfigError(f"logging.format: expected 'plain' or 'json', got {fmt!r}")
    return LoggingConfig(level=level, format=fmt)


# --- checkers: each takes (value, key path) and returns the typed value ------


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _known(raw: Mapping[str, Any], prefix: str, keys: set[str]) -> None:
    for key in raw:
        if key not in keys:
            where = prefix or "top level"
            raise ConfigError(
                f"{_join(prefix, str(key))}: unknown key in {where} "
                f"(known: {', '.join(sorted(keys))})"
            )


def _mapping(raw: Mapping[str, Any], key: str, path: str | None = None) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path or key}: expected a mapping, got {_show(value)}")
    return value


def _get(
    raw: Mapping[str, Any],
    key: str,
    prefix: str,
    default: _T,
    check: Callable[[Any, str], _T],
) -> _T:
    if key not in raw:
        return default
    return check(raw[key], _join(prefix, key))


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {_show(value)}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: expected a non-empty string, got {_show(value)}")
    return value


def _name(value: Any, path: str) -> str:
    text = _str(value, path)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ConfigError(f"{path}: expected letters, digits, '_', '.' or '-' (1-64), got {text!r}")
    return text


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list, got {_show(value)}")
    return value


def _ae_title(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _AE_TITLE.match(value) or not value.strip():
        raise ConfigError(
            f"{path}: expected an AE title of 1-16 printable ASCII characters without "
            f"backslash, got {_show(value)}"
        )
    return value.strip()


def _host(value: Any, path: str) -> str:
    text = _str(value, path)
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", text):
        raise ConfigError(f"{path}: expected a host name or IP address, got {text!r}")
    return text


def _int_range(low: int, high: int) -> Callable[[Any, str], int]:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                f"{path}: expected an integer from {low} to {high}, got {_show(value)}"
            )
        return value

    return check


def _pdu(value: Any, path: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not (value == 0 or 4096 <= value <= 2**32 - 1)
    ):
        raise ConfigError(
            f"{path}: expected 0 (unlimited) or an integer from 4096 to 4294967295, "
            f"got {_show(value)}"
        )
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: expected a number of seconds, got {_show(value)}")
    return float(value)


def _positive(value: Any, path: str) -> float:
    number = _number(value, path)
    if not number > 0:
        raise ConfigError(f"{path}: expected a number greater than 0, got {_show(value)}")
    return number


def _non_negative(value: Any, path: str) -> float:
    number = _number(value, path)
    if number < 0:
        raise ConfigError(f"{path}: expected a number of 0 or more, got {_show(value)}")
    return number


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _opt_path(raw: Mapping[str, Any], key: str, prefix: str, base: Path) -> Path | None:
    if raw.get(key) is None:
        return None
    path = _resolve(_str(raw[key], _join(prefix, key)), base)
    if not path.is_file():
        raise ConfigError(f"{_join(prefix, key)}: file not found, got {str(path)!r}")
    return path


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part}: expected a mapping, got {_show(child)}")
        node = child
    node[leaf] = value
