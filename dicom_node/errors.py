"""One error hierarchy for the node.

Every error the node raises on purpose derives from :class:`DicomNodeError` and,
where it refines a builtin, from that builtin too, so callers can catch either.

Another library's error can quote what it was given: pydicom "Invalid value for VR DA:
'19500615'", a float() of a header value "could not convert string to float: 'DOE'".
:func:`describe` is how such an error's text reaches a log line, the jobs table, a
delivery error or an HTTP answer: with every quoted value withheld.
"""

from __future__ import annotations

import re
import struct
import zlib

from pydicom.errors import BytesLengthException, InvalidDicomError

# A quoted value as libraries write it: as it is ('A\B', 'A\'), or by repr(), which escapes a
# quote of its own kind ('O\'BRIEN "JR"'). Each reading alone leaves part of the other's
# values in view; every stretch either finds quoted is withheld.
_QUOTED = (
    re.compile(r"'[^']*'|\"[^\"]*\""),
    re.compile(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"", re.DOTALL),
)
WITHHELD = "'…'"


class DicomNodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(DicomNodeError, ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key path."""


class SpoolError(DicomNodeError, OSError):
    """The spool could not store or read an instance."""


class SpoolFullError(SpoolError):
    """Free space on the spool's file system is below ``storage.min_free_bytes``."""


class RejectedInstanceError(DicomNodeError, ValueError):
    """An incoming instance cannot be accepted; carries the DICOM status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class StateError(DicomNodeError, RuntimeError):
    """The node's SQLite state is unusable (wrong schema version, locked, corrupt)."""


class FactoryError(DicomNodeError, ValueError):
    """The synthetic DICOM factory was asked for something it cannot make."""


class ReportError(DicomNodeError, ValueError):
    """The inputs of a report do not fit together."""


# What reading a DICOM file can raise when it is not one, or is truncated or garbled (on disk
# since it was received, or in a site's training folder): ValueError and struct.error for a
# short or malformed element, zlib.error for a damaged deflated data set.
UNREADABLE_DICOM = (
    OSError, EOFError, ValueError, AttributeError, struct.error, zlib.error, InvalidDicomError,
    BytesLengthException,
)  # fmt: skip


def withhold_quoted(text: str) -> str:
    """``text`` with every quoted value ('…' or "…") replaced by '…'."""
    merged: list[list[int]] = []
    for start, end in sorted(m.span() for pattern in _QUOTED for m in pattern.finditer(text)):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    parts, last = [], 0
    for start, end in merged:
        parts += [text[last:start], WITHHELD]
        last = end
    return "".join(parts) + text[last:]


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Where a file that should be UTF-8 is not: "not UTF-8 text (byte 0xFC at offset 40)"."""
    return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02X} at offset {exc.start})"


# An object's repr with its address (Pillow: "cannot identify image file <_io.BytesIO
# object at 0x7fb0884b4a90>"): a different text in every process, so a rerun's report,
# whose UID is hashed from its content, got a new UID.
_ADDRESS = re.compile(r"<([^<>]*?) at 0x[0-9a-fA-F]+>")


def one_line(text: str) -> str:
    """``text`` on one line: pydicom's "...all available plugins:" is followed by a line per
    decoder, which made a report's Comment and a log line span lines. A line after one
    ending in ":" follows it with a space, any other with "; "."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "".join(
        line if n == 0 else (" " if lines[n - 1].endswith(":") else "; ") + line
        for n, line in enumerate(lines)
    )


def describe(exc: BaseException) -> str:
    """An error as text that never carries header values, on one line.

    The node's own errors (:class:`DicomNodeError`) as they are: their messages quote UIDs,
    paths, config keys and values, never patient data, and any other library's text they
    include went through this function. Any other error as "Type: message": an OSError's
    message as it is (errno, reason, file name: the spool's paths are UIDs), another's with
    its quoted values withheld.
    """
    if isinstance(exc, DicomNodeError):
        return str(exc)
    message = str(exc) if isinstance(exc, OSError) else withhold_quoted(str(exc))
    message = one_line(_ADDRESS.sub(r"<\1>", message))
    return f"{type(exc).__name__}: {message}"
