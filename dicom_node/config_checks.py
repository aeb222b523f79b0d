"""Checkers for configuration values: each takes (value, key path) and returns the typed value.

Every error is a :class:`ConfigError` naming the key path and the bad value.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dicom_node.errors import ConfigError

_AE_TITLE = re.compile(
    r"^[\x20-\x5b\x5d-\x7e]{1,16}$"
)  # default character repertoire, no backslash
_T = TypeVar("_T")


def show(value: Any) -> str:
    """A value as the admin wrote it in YAML: null, true/false, a date as written (YAML
    reads 2024-01-01 as a date: Python's repr, datetime.date(2024, 1, 1), is not what they
    typed); anything else as its repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date):
        return value.isoformat()
    return repr(value)


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def known(raw: Mapping[str, Any], prefix: str, keys: set[str]) -> None:
    for key in raw:
        if key not in keys:
            where = prefix or "top level"
            raise ConfigError(
                f"{join(prefix, str(key))}: unknown key in {where} "
                f"(known: {', '.join(sorted(keys))})"
            )


def sub_mapping(raw: Mapping[str, Any], key: str, path: str | None = None) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path or key}: expected a mapping, got {show(value)}")
    return value


def get_key(
    raw: Mapping[str, Any],
    key: str,
    prefix: str,
    default: _T,
    check: Callable[[Any, str], _T],
) -> _T:
    if key not in raw:
        return default
    return check(raw[key], join(prefix, key))


def as_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {show(value)}")
    return value


def as_str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        # YAML reads no/yes/on/off as booleans, 2024-01-01 as a date, 1234 as a number.
        typed = isinstance(value, bool | int | float | datetime.date)
        hint = "; quote it in YAML" if typed else ""
        raise ConfigError(f"{path}: expected a non-empty string, got {show(value)}{hint}")
    return value


def as_long_string(value: Any, path: str) -> str:
    """A DICOM LO value the node writes into its results: at most 64 characters, no
    backslash (the value separator) nor control characters."""
    text = as_str(value, path)
    if len(text) > 64 or "\\" in text or any(_control(c) for c in text):
        raise ConfigError(
            f"{path}: expected at most 64 characters without backslash or control "
            f"characters (a DICOM Long String), got {text!r} ({len(text)} characters)"
        )
    return text


def _control(character: str) -> bool:
    """A control character (C0, DEL, C1) or a line or paragraph separator: not text a Long
    String may hold (U+0085 and U+2028 passed, and went into every SR)."""
    return unicodedata.category(character) in ("Cc", "Zl", "Zp")


def as_name(value: Any, path: str) -> str:
    text = as_str(value, path)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ConfigError(f"{path}: expected letters, digits, '_', '.' or '-' (1-64), got {text!r}")
    return text


def as_list(value: Any, path: str) -> list[Any]:
    """A list; null as an empty one (for keys whose default is empty: the same thing)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list, got {show(value)}")
    return value


def as_stated_list(value: Any, path: str) -> list[Any]:
    """A list for a key whose default is not empty: null (every item commented out) is
    refused, since it could mean none or the default (it read as none, silently: no CT
    counted, no lateral paired, every study skipped without routing rules)."""
    if value is None:
        raise ConfigError(
            f"{path}: expected a list, got null (every item commented out?): write [] for "
            "none, or remove the key for the default"
        )
    return as_list(value, path)


def as_ae_title(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _AE_TITLE.match(value) or not value.strip():
        # YAML reads NO, OFF, YES and ON as booleans and 1234 as a number: say so.
        hint = "; quote it in YAML" if isinstance(value, bool | int | float) else ""
        raise ConfigError(
            f"{path}: expected an AE title of 1-16 printable ASCII characters without "
            f"backslash, got {show(value)}{hint}"
        )
    return value.strip()


def as_host(value: Any, path: str) -> str:
    """A host name, an IPv4 or an IPv6 address: a colon only in an IPv6 address (HOST:PORT,
    as engines.triton.url takes it, passed check-config and never connected), digits and
    dots only in an IPv4 address (999.1.1.1 was looked up as a name)."""
    text = as_str(value, path)
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", text):
        raise ConfigError(f"{path}: expected a host name or IP address, got {text!r}")
    if ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ConfigError(
                f"{path}: expected a host name or IP address (a port goes in its own key), "
                f"got {text!r}"
            ) from None
    elif re.fullmatch(r"[0-9.]+", text):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise ConfigError(f"{path}: expected an IPv4 address, got {text!r}") from None
    return text


def int_range(low: int, high: int) -> Callable[[Any, str], int]:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                f"{path}: expected an integer from {low} to {high}, got {show(value)}"
            )
        return value

    return check


def pdu(value: Any, path: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not (value == 0 or 4096 <= value <= 2**32 - 1)
    ):
        raise ConfigError(
            f"{path}: expected 0 (unlimited) or an integer from 4096 to 4294967295, "
            f"got {show(value)}"
        )
    return value


MAX_SECONDS = 1e7


def exponent_hint(value: Any) -> str:
    """PyYAML (YAML 1.1) reads 1e3 as a string; 1.0e+3 is a float: how to write it."""
    if not isinstance(value, str) or not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value):
        return ""
    # With a dot in the mantissa YAML reads a float: 1e-2 is 1.0e-2 (not 0.0, which a key
    # allowing 0 took, changing what was meant). YAML 1.1 also needs the exponent's sign:
    # 1.0e3 is text, 1.0e+3 a float.
    mantissa, _, exponent = value.lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent[:1] not in ("+", "-"):
        exponent = "+" + exponent
    return f" (YAML reads it as text: write {mantissa}e{exponent})"


def as_number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        hint = exponent_hint(value)
        raise ConfigError(f"{path}: expected a number of seconds, got {show(value)}{hint}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float's range
        number = math.inf
    # YAML's .nan and .inf are floats too: NaN compares false with every bound (and breaks the
    # outbox's NOT NULL times), inf leaves whatever waits on it waiting forever.
    if not math.isfinite(number):
        raise ConfigError(f"{path}: expected a finite number of seconds, got {show(value)}")
    if abs(number) > MAX_SECONDS:
        # Socket timeouts and waits overflow the platform's time_t near 9.2e9 s.
        raise ConfigError(
            f"{path}: expected at most {MAX_SECONDS:.0f} seconds (115 days), got {show(value)}"
        )
    return number


def positive(value: Any, path: str) -> float:
    number = as_number(value, path)
    if not number > 0:
        raise ConfigError(f"{path}: expected a number greater than 0, got {show(value)}")
    return number


def non_negative(value: Any, path: str) -> float:
    number = as_number(value, path)
    if number < 0:
        raise ConfigError(f"{path}: expected a number of 0 or more, got {show(value)}")
    return number


def resolve(value: str, base: Path, key: str) -> Path:
    """``value`` as a path: ``~`` expanded, relative to ``base`` (the config file's folder)."""
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:  # ~user with no such user, or no home directory
        raise ConfigError(f"{key}: cannot expand '~' ({exc}), got {value!r}") from None
    return path if path.is_absolute() else base / path


def folder(value: str, base: Path, key: str) -> Path:
    """``value`` resolved as a folder (see :func:`resolve`); an existing file there is
    refused: the commands that read the folder said "the node has not run yet", or that no
    engine was built, and the node's start blamed the engines."""
    path = resolve(value, base, key)
    # os.path, not Path (whose is_file and exists raise PermissionError on Python 3.11):
    # a folder the checking user may not look into (an admin's check-config of the
    # service's mode-700 spool) passes.
    if os.path.exists(path) and not os.path.isdir(path):  # noqa: PTH110, PTH112
        # A file, a device (/dev/null), a FIFO: not a folder.
        raise ConfigError(f"{key}: expected a folder, got {str(path)!r}, which is not a folder")
    return path


def opt_path(raw: Mapping[str, Any], key: str, prefix: str, base: Path) -> Path | None:
    if raw.get(key) is None:
        return None
    path = resolve(as_str(raw[key], join(prefix, key)), base, join(prefix, key))
    try:
        found = path.is_file()
    except OSError as exc:  # a folder this user may not look into: was a bare PermissionError
        raise ConfigError(
            f"{join(prefix, key)}: cannot look at the file ({exc.strerror}; check the "
            f"configuration as the node's user), got {str(path)!r}"
        ) from None
    if not found and path.exists():  # was "file not found" for a folder
        what = "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(f"{join(prefix, key)}: expected a file, got {str(path)!r}, {what}")
    if not found:
        raise ConfigError(f"{join(prefix, key)}: file not found, got {str(path)!r}")
    return path


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            # Absent, or present with every key commented out (YAML null): an empty section,
            # as sub_mapping reads it.
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parents[: i + 1])
            raise ConfigError(f"{where}: expected a mapping, got {show(child)}")
        node = child
    node[leaf] = value
