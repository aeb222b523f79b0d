from __future__ import annotations

from pathlib import Path

from dicom_node.config import Config
from dicom_node.demo import run_demo


def test_demo_sends_a_study_and_reports_it_assembled(tmp_path: Path) -> None:
    lines = list(run_demo(Config(), tmp_path))
    text = "\n".join(lines)
    assert sum("decode identical" in line for line in lines) == 10
    assert "state complete (released) with 10 instances" in text
    assert "job 1 (generation 1) pending" in text
    assert "PHANTOM" not in text  # the report shows UIDs, never patient names
    assert len(list((tmp_path / "spool" / "instances").rglob("*.dcm"))) == 10
