"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.config import Config, parse_config

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


# Triage overrides for the untrained test engines (outputs near 1/K): every hip then has
# a THA (so the cascade runs) and a femoral neck fracture (URGENT).
FORCE_FINDINGS = {
    "thresholds": {
        "hip_screen": {"total_hip_arthroplasty": 0.01, "femoral_neck_fracture": 0.01},
        "hipnet": {"aseptic_loosening": 0.01},
    }
}


# The default routing's screening rule (its cascade stays the default); the fusion
# engines' rules are left out: most tests package only hip_screen and hipnet.
SCREEN_RULE = {
    "name": "hip-ap-radiographs",
    "engine": "hip_screen",
    "when": {
        "Modality": ["DX", "CR"],
        "BodyPartExamined": "(?i)(HIP|PELVIS)?",
        "ViewPosition": ["AP", "PA"],
    },
}


def pipeline_config(spool: Path, engine_cache: Path, **dotted: Any) -> Config:
    """:func:`config_for` with the screening rule and cascade of the default routing and the
    test engines in ``engine_cache``."""
    dotted.setdefault("routing", {"rules": [SCREEN_RULE]})
    return config_for(
        spool,
        engines={"cache_dir": str(engine_cache), "backend": "onnxruntime", "threads": 2},
        sending={"backoff_seconds": 0.2, "max_backoff_seconds": 1, "timeout_seconds": 10},
        **dotted,
    )


def config_for(spool: Path, **dotted: Any) -> Config:
    """A loopback config on an ephemeral port with fast assembly; ``dotted`` overrides keys."""
    raw: dict[str, Any] = {
        "node": {"host": "127.0.0.1", "port": 0, "drain_seconds": 5},
        "storage": {"spool_dir": str(spool), "min_free_bytes": 0},
        "assembly": {"quiet_seconds": 2, "after_release_seconds": 0.3, "max_wait_seconds": 60},
        # No engines: the ingest tests need none; pipeline tests set their own rules.
        "routing": {"rules": [], "cascade": []},
        "metrics": {"port": 0},
    }
    for key, value in dotted.items():
        *parents, leaf = key.split("__")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_config(raw)


def tiny_image(
    study_uid: str | None = None,
    sop_class: str = CR_STORAGE,
    transfer_syntax: str = ExplicitVRLittleEndian,
    size: int = 16,
) -> Dataset:
    """A minimal, valid-enough image dataset for network tests (no codec involved)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "PHANTOM^TEST"
    ds.PatientID = "PHANTOM-0001"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(size * size, dtype=np.uint16) % 4096).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def run_tool(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def dciodvfy_findings(path: Path) -> list[str]:
    """The Error and Warning lines dciodvfy reports for a file; skips without dicom3tools."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = run_tool(["dciodvfy", str(path)], env=dict(os.environ))
    lines = (result.stderr + result.stdout).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning"))]
