from __future__ import annotations

import dataclasses
from pathlib import Path

from dicom_node.config import Config, EnginesConfig
from dicom_node.demo import run_demo
from dicom_node.demo.cases import CASES


def test_demo_sends_phantom_studies_and_reports_each_result(
    tmp_path: Path, engine_cache: Path
) -> None:
    cfg = dataclasses.replace(
        Config(), engines=EnginesConfig(cache_dir=engine_cache, backend="onnxruntime", threads=2)
    )
    lines = list(run_demo(cfg, tmp_path / "demo"))
    text = "\n".join(lines)
    assert "building" not in text  # the engines were there
    assert sum(line.startswith("sent ") for line in lines) == len(CASES)
    assert sum(line.startswith("study ") for line in lines) == len(CASES)
    assert text.count("  priority ") == len(CASES)
    assert text.count("result in the PACS") == len(CASES)
    # The two THA cases had a lateral view: Hip-Net ran only when hip_screen called a THA,
    # which the untrained test engines may or may not do; the table says which.
    assert "truth    R normal, L total hip arthroplasty (aseptic loosening)" in text
    assert "PHANTOM" not in text  # the report shows UIDs, never patient names
    results = tmp_path / "demo" / "results"
    for n, case in enumerate(CASES, start=1):
        folder = results / f"{n}-{case.name}"
        assert (
            "TID 1500" in (folder / "sr.txt").read_text()
            or "1500" in (folder / "sr.txt").read_text()
        )
        assert list(folder.glob("sc-*.png")), f"no overlay preview for {case.name}"
    assert lines[-1].endswith("not for clinical use")
