"""Logging set-up: plain text or one JSON object per line.

Log lines identify work by Study/SOP Instance UID and association; the code
never passes patient names or IDs to a logger. The DICOM libraries do quote header
values (pydicom: "Invalid value for VR DA: '19500615'"; its warnings; highdicom's
person-name warning): their records, and Python warnings (routed into logging, so a
JSON log stays JSON), have every quoted value withheld.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from dicom_node.config import LoggingConfig


class JsonFormatter(logging.Formatter):
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
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class WithholdValues(logging.Filter):
    """Replaces every quoted value in the messages of :data:`QUOTING_LOGGERS` by '…'."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in {n.split(".")[0] for n in QUOTING_LOGGERS}:
            record.msg = _QUOTED.sub("'…'", record.getMessage())
            record.args = None
        return True


def configure_logging(cfg: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(WithholdValues())
    logging.captureWarnings(True)  # warnings.warn(...) becomes a log record, filtered too
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
    # pynetdicom logs every PDU at INFO; keep its own chatter to warnings and up
    # unless the node itself is debugging.
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if cfg.level == "DEBUG" else logging.WARNING
    )
