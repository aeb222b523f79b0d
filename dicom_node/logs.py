"""Logging set-up: plain text or one JSON object per line.

Log lines identify work by Study/SOP Instance UID and association; the code
never passes patient names or IDs to a logger. The DICOM libraries do quote header
values (pydicom: "Invalid value for VR DA: '19500615'"; its warnings; highdicom's
person-name warning): their records, and Python warnings (routed into logging, so a
JSON log stays JSON), have every quoted value withheld. So do the exception lines of every
traceback a record carries (``log.exception`` after another library's error), whichever
logger wrote it; the frames (file, line, code) stay as they are.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType

from dicom_node.config import LoggingConfig
from dicom_node.errors import withhold_quoted

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class _Formatter(logging.Formatter):
    def formatException(self, ei: _ExcInfo) -> str:  # noqa: N802 - logging's name
        """The traceback with quoted values withheld in the text of each exception of its
        chain ("ValueError: …", "pydicom.errors.InvalidDicomError: …"), a value that runs
        over several lines too; frames (file, line, code) as they are."""
        text = super().formatException(ei)
        exc, seen = ei[1], set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            only = "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")
            text = text.replace(only, withhold_quoted(only))
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        return text

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """One record, one line: a line break in a message (a peer's UID quoted by a
        library) is written as \\n, so it cannot forge a line of its own."""
        record.message = one_line(record.message)
        return super().formatMessage(record)


def one_line(text: str) -> str:
    """``text`` with its control characters (line breaks too) escaped, tabs kept."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else ascii(c)[1:-1] for c in text)


class JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# Loggers whose messages may quote header values (patient data) they were given.
QUOTING_LOGGERS = ("pydicom", "highdicom", "py.warnings")


class WithholdValues(logging.Filter):
    """Replaces every quoted value in the messages of :data:`QUOTING_LOGGERS` by '…'."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in {n.split(".")[0] for n in QUOTING_LOGGERS}:
            record.msg = withhold_quoted(record.getMessage())
            record.args = None
        return True


class Repeats(logging.Filter):
    """Lets a message through once per ``seconds``: pynetdicom logs two ERROR lines for each
    connection that fails ("unable to connect to remote", "TCP Initialisation Error: ..."),
    which the reachability check of a PACS that is down repeats every round; the node's own
    lines say which destination and when it is back."""

    def __init__(self, seconds: float = 900.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.seconds = seconds
        self.clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message, now = record.getMessage(), self.clock()
        with self._lock:
            last = self._last.get(message)
            if last is not None and now - last < self.seconds:
                return False
            if len(self._last) >= 1000:  # bounded: drop what is older than the window
                self._last = {m: t for m, t in self._last.items() if now - t < self.seconds}
            self._last[message] = now
        return True


class NoTracebacks(logging.Filter):
    """Drops records that carry a traceback: pydicom logs each decoding plugin's failure at
    ERROR with its traceback (95 lines for one truncated RLE image, each plugin, decoded
    twice), then raises one error naming every plugin's reason, which the node's own line
    (the image not analysed, the job failed) quotes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


# Libraries that log routine work at INFO.
CHATTY_LOGGERS = ("pynetdicom", "highdicom", "openjpeg")
# Loggers whose tracebacks repeat what the node says itself (kept at DEBUG).
TRACEBACK_LOGGERS = ("pydicom.pixels.decoders.base",)
# pynetdicom's loggers whose lines repeat as long as a peer is down.
REPEATING_LOGGERS = ("pynetdicom.transport",)


def configure_logging(cfg: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(WithholdValues())
    logging.captureWarnings(True)  # warnings.warn(...) becomes a log record, filtered too
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
    # pynetdicom logs every PDU at INFO, highdicom every module it copies into a result
    # (seven lines per SR or overlay), openjpeg each encode: keep their chatter to warnings
    # and up unless the node itself is debugging.
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(
            logging.DEBUG if cfg.level == "DEBUG" else logging.WARNING
        )
    for name in TRACEBACK_LOGGERS:
        logger = logging.getLogger(name)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, NoTracebacks)]
        if cfg.level != "DEBUG":
            logger.addFilter(NoTracebacks())
    for name in REPEATING_LOGGERS:
        logger = logging.getLogger(name)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, Repeats)]
        logger.addFilter(Repeats())
