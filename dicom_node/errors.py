"""One error hierarchy for the node.

Every error the node raises on purpose derives from :class:`DicomNodeError` and,
where it refines a builtin, from that builtin too, so callers can catch either.
"""

from __future__ import annotations


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
