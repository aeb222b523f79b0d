"""Packaging an engine folder: all of it or nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engines.catalog import engine_spec
from engines.export import ExportError
from engines.manifest import MANIFEST_NAME, read_manifest, verify_artefacts
from engines.models import create
from engines.package import package_engine


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_failed_export_leaves_the_previous_engine_as_it_was(
    engine_cache: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "hip_screen"
    shutil.copytree(engine_cache / "hip_screen", folder)
    before = _contents(folder)
    # Other weights at an input the network cannot take: the ONNX export fails after the
    # checkpoint was written (to the staging folder, not over the engine's).
    with pytest.raises(RuntimeError):
        package_engine(engine_spec("hip_screen"), create("hip_screen"), 0, folder, "9.9.9")
    assert _contents(folder) == before
    manifest = read_manifest(folder)
    verify_artefacts(manifest, folder, tuple(manifest.artefacts))
    assert [p.name for p in tmp_path.iterdir()] == ["hip_screen"]  # no staging folder left


def test_packaging_replaces_every_artefact_and_keeps_other_files(
    engine_cache: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "hip_screen"
    shutil.copytree(engine_cache / "hip_screen", folder)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "epoch-001.pt").write_bytes(b"the user's")
    old = read_manifest(folder)
    new = package_engine(engine_spec("hip_screen"), create("hip_screen"), 64, folder, "2.0.0")
    assert read_manifest(folder) == new and new.version == "2.0.0"
    assert new.artefacts["checkpoint"].sha256 != old.artefacts["checkpoint"].sha256
    verify_artefacts(new, folder, tuple(new.artefacts))
    assert (folder / "checkpoints" / "epoch-001.pt").read_bytes() == b"the user's"
    assert (folder / MANIFEST_NAME).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hip_screen"]


def test_an_osteoporosis_network_needs_a_name_for_each_clinical_column(tmp_path: Path) -> None:
    model = create("osteoporosis", clinical_width=7, components=6)
    with pytest.raises(
        ExportError, match=r"clinical: the network takes 7 clinical columns, got 1 names \(age\)"
    ):
        package_engine(
            engine_spec("osteoporosis"), model, 80, tmp_path / "o", "1.0", clinical=("age",)
        )
    assert not (tmp_path / "o").exists()
