"""DICOM triage node for hip radiographs (research software; not for clinical use)."""

__version__ = "0.1.0"
