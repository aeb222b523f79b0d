from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_node.errors import FactoryError
from dicom_node.synthetic.dcmtk import dcmtk_program, storescu, storescu_profile


def test_profile_lists_one_context_per_class_and_syntax(tmp_path: Path) -> None:
    path, name = storescu_profile(tmp_path / "p.cfg", ["1.2.840.10008.1.2.1"], ["1.2.3"])
    text = Path(path).read_text()
    assert name == "All"
    assert "TransferSyntax1 = 1.2.840.10008.1.2.1" in text
    assert "PresentationContext1 = 1.2.3\\TS0" in text
    assert "PresentationContext2" not in text


def test_profile_refuses_more_than_128_contexts(tmp_path: Path) -> None:
    with pytest.raises(FactoryError, match=r"200 classes x 1 syntaxes exceed 128"):
        storescu_profile(
            tmp_path / "p.cfg", ["1.2.840.10008.1.2.1"], [f"1.2.{i}" for i in range(200)]
        )


def test_missing_storescu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FactoryError, match=r"storescu not found: install dcmtk"):
        storescu("127.0.0.1", 104, [], called_ae="X")


def test_dcmtk_programs_are_never_pynetdicoms_scripts_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pynetdicom installs storescu, storescp, echoscu... into this Python's scripts folder:
    # first on PATH (an activated venv, the container image), the demo ran pynetdicom's
    # storescu with dcmtk's arguments and failed, and the ingest benchmark would have timed
    # pynetdicom's storescp as dcmtk's.
    import sysconfig

    scripts = sysconfig.get_path("scripts")
    assert Path(scripts, "storescu").is_file()  # pynetdicom's, in this virtualenv
    dcmtk_bin = tmp_path / "bin"
    dcmtk_bin.mkdir()
    fake = dcmtk_bin / "storescu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([scripts, str(dcmtk_bin)]))
    assert dcmtk_program("storescu") == str(fake)
    monkeypatch.setenv("PATH", scripts)
    assert dcmtk_program("storescu") is None
    with pytest.raises(FactoryError, match=r"^storescu not found: install dcmtk"):
        storescu("127.0.0.1", 1, [], called_ae="TRIAGE")
