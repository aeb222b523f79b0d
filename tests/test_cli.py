"""The command line's own handling: what any command does on an interrupt or an OS error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node import demo
from dicom_node.cli import main


def test_an_interrupt_is_one_line_and_status_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(cfg: object, out: object) -> Iterator[str]:
        yield "building the demo engines ..."
        raise KeyboardInterrupt  # Ctrl-C during a build

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 130
    captured = capsys.readouterr()
    assert captured.out == "building the demo engines ...\n"
    assert captured.err == "dicom-node: interrupted\n"
