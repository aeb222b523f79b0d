"""Fixtures for the synthetic factory's tests: dicom3tools and dcmtk as independent checkers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_node.synthetic import StudyIdentity

# The dcmtk tool that decompresses each encapsulated syntax to Explicit VR Little Endian.
_DCMTK_DECODER = {
    JPEGBaseline8Bit: "dcmdjpeg",
    JPEGExtended12Bit: "dcmdjpeg",
    JPEGLossless: "dcmdjpeg",
    JPEGLosslessSV1: "dcmdjpeg",
    JPEGLSLossless: "dcmdjpls",
    JPEGLSNearLossless: "dcmdjpls",
    RLELossless: "dcmdrle",
}
# dcmtk 3.6 has no JPEG 2000 codec.
_NO_DCMTK_DECODER = frozenset({JPEG2000Lossless, JPEG2000})


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _transfer_syntax(path: Path) -> UID:
    return UID(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


@pytest.fixture
def dciodvfy() -> Callable[[Path], list[str]]:
    """``check(path)``: the Error and Warning lines dciodvfy reports for a file."""
    _require("dciodvfy", "dcmconv")

    def check(path: Path) -> list[str]:
        target = path
        if _transfer_syntax(path) == DeflatedExplicitVRLittleEndian:
            # dicom3tools cannot read deflated files ("Dicom dataset read failed", also for
            # ones dcmtk deflates), so dcmtk inflates it and dciodvfy checks the content.
            target = path.with_suffix(".inflated.dcm")
            inflated = _run("dcmconv", "+te", str(path), str(target))
            assert inflated.returncode == 0, inflated.stderr
        result = _run("dciodvfy", str(target))
        lines = (result.stdout + result.stderr).splitlines()
        return [line for line in lines if line.startswith(("Error", "Warning"))]

    return check


@pytest.fixture
def dcmtk_pixels() -> Callable[[Path], np.ndarray | None]:
    """``decode(path)``: the stored values after dcmtk decodes the file to native little endian.

    Native syntaxes (including big endian and deflated) go through ``dcmconv +te``.
    For JPEG 2000, which dcmtk 3.6 cannot decode, the file is only parsed
    (``dcmdump``) and None is returned.
    """
    _require("dcmconv", "dcmdjpeg", "dcmdjpls", "dcmdrle", "dcmdump")

    def decode(path: Path) -> np.ndarray | None:
        uid = _transfer_syntax(path)
        if uid in _NO_DCMTK_DECODER:
            dumped = _run("dcmdump", "-q", str(path))
            assert dumped.returncode == 0 and not dumped.stderr, dumped.stderr
            return None
        target = path.with_suffix(".dcmtk.dcm")
        tool = [_DCMTK_DECODER[uid]] if uid in _DCMTK_DECODER else ["dcmconv", "+te"]
        result = _run(*tool, str(path), str(target))
        assert result.returncode == 0 and not result.stderr, result.stderr
        decoded = pydicom.dcmread(target)
        assert decoded.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        return np.asarray(decoded.pixel_array)

    return decode


@pytest.fixture
def identity() -> StudyIdentity:
    return StudyIdentity.synthetic(1)


@pytest.fixture
def image() -> np.ndarray:
    """A 64x64 float image: a smooth gradient, a bright disc (a femoral head) and mild noise."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    disc = np.exp(-((x - 40) ** 2 + (y - 24) ** 2) / 60.0)
    noise = np.random.default_rng(0).normal(0.0, 0.01, (64, 64))
    return np.asarray(0.2 + 0.4 * x / 63 + 0.3 * disc + noise)
