from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.errors import FactoryError
from dicom_node.synthetic.dcmtk import storescu, storescu_profile


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
