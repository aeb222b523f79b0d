from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from helpers import tiny_image

from dicom_node import demo
from dicom_node.config import Config, EnginesConfig, parse_config
from dicom_node.config_results import Destination
from dicom_node.demo import DemoError, _send, _table, run_demo
from dicom_node.demo.cases import CASES, SEED
from dicom_node.demo.cases import _write as _write_case
from dicom_node.demo.pacs import StandInPacs
from dicom_node.node import Node
from dicom_node.send.echo import echo
from dicom_node.spool import Spool
from engines.phantoms.clinical import osteoporosis_case


def test_demo_sends_phantom_studies_and_reports_each_result(
    tmp_path: Path, all_engines: Path
) -> None:
    cfg = dataclasses.replace(
        Config(), engines=EnginesConfig(cache_dir=all_engines, backend="onnxruntime", threads=2)
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
    assert (
        "truth    R normal, L total hip arthroplasty (aseptic loosening); bone: no osteoporosis"
        in text
    )
    assert "; bone: no osteoporosis; CT of R: femoroacetabular impingement" in text
    # Studies whose header gives age and sex ran the osteoporosis engine (both hips); the
    # two with a CT the multimodal engine too.
    rows = [line.split() for line in lines if line.startswith("  ") and len(line.split()) > 3]
    osteoporosis = [r for r in rows if r[0] == "osteoporosis"]
    patients = [osteoporosis_case(c.bone, SEED + n) for n, c in enumerate(CASES, start=1)]
    routed = [p for p in patients if p.age_years is not None and p.sex is not None]
    assert len(routed) >= len(CASES) - 1
    assert len(osteoporosis) == 2 * len(routed)
    assert all(r[2].startswith("AP+age,") and "sex" in r[2] for r in osteoporosis)
    multimodal = [r for r in rows if r[0] == "hip_multimodal"]
    # The CTs are of the right hip: only the right hips go to the multimodal engine.
    assert len(multimodal) == 2 and {r[1] for r in multimodal} == {"R"}
    assert {r[2] for r in multimodal} <= {"AP+CT", "AP+CT+text"}
    assert "AP+CT+text" in {r[2] for r in multimodal}  # a case without request text is fine
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


def test_the_pacs_stand_in_answers_c_echo(tmp_path: Path) -> None:
    pacs = StandInPacs(tmp_path / "pacs")
    pacs.start()
    try:
        peer = Destination("demo-pacs", ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.port)
        assert echo(peer, "TRIAGE", timeout=5.0) is None
    finally:
        pacs.stop()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_the_pacs_stand_in_refuses_uids_that_would_leave_its_folder(tmp_path: Path) -> None:
    # The UIDs become the file's path: "../../escaped" was written outside the folder.
    from pynetdicom import AE

    pacs = StandInPacs(tmp_path / "pacs")
    pacs.start()
    try:
        ds = tiny_image()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture, a result class
        ds.StudyInstanceUID, ds.SOPInstanceUID = "x", "../../escaped"
        ae = AE("TRIAGE")
        ae.add_requested_context(ds.SOPClassUID)
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.ae_title)
        assert assoc.is_established
        try:
            assert int(assoc.send_c_store(ds).Status) == 0xC000
        finally:
            assoc.release()
    finally:
        pacs.stop()
    assert not list(tmp_path.rglob("escaped*"))


def test_the_pacs_stand_in_has_no_port_unless_started(tmp_path: Path) -> None:
    pacs = StandInPacs(tmp_path / "pacs")
    with pytest.raises(RuntimeError, match=r"^the PACS stand-in is not started$"):
        _ = pacs.port
    pacs.start()
    try:
        assert pacs.port > 0
    finally:
        pacs.stop()
    with pytest.raises(RuntimeError, match=r"^the PACS stand-in is not started$"):
        _ = pacs.port


@pytest.fixture
def refusing_node(start_node: Callable[..., Node]) -> Node:
    """A node that accepts associations from PACS only, not from the demo's modality."""
    return start_node(node__allowed_calling_aes=["PACS"])


def _one_file(tmp_path: Path) -> list[Path]:
    path = tmp_path / "image.dcm"
    tiny_image().save_as(path, enforce_file_format=True)
    return [path]


def test_a_refused_storescu_send_stops_the_demo(
    refusing_node: Node, tmp_path: Path, dcmtk_env: dict[str, str]
) -> None:
    with pytest.raises(DemoError, match=r"^storescu failed: .*\S"):
        _send(refusing_node, _one_file(tmp_path), tmp_path)


def test_a_refused_pynetdicom_send_stops_the_demo(
    refusing_node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "dcmtk_program", lambda name: None)  # as where dcmtk is missing
    with pytest.raises(DemoError, match=r"^the node refused the demo's association$"):
        _send(refusing_node, _one_file(tmp_path), tmp_path)


def test_an_instance_the_node_does_not_store_stops_the_pynetdicom_send(
    start_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = start_node(storage__min_free_bytes=2**62)  # every instance: 0xA700
    monkeypatch.setattr(demo, "dcmtk_program", lambda name: None)
    # Was: "sent" regardless, then a misleading time-out waiting for results.
    with pytest.raises(DemoError, match=r"^the node did not store [0-9.]+ \(status 0xA700\)$"):
        _send(full, _one_file(tmp_path), tmp_path)


def test_studies_without_a_result_in_time_stop_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No rules, so no engines to build; no time to wait, as if the results never came.
    monkeypatch.setattr(demo, "WAIT_SECONDS", 0.0)
    cfg = parse_config({"routing": {"rules": [], "cascade": []}})
    with pytest.raises(DemoError, match=rf"^{len(CASES)} studies got no result within 0 s$"):
        list(run_demo(cfg, tmp_path / "demo"))


def test_a_demo_folder_whose_spool_a_running_node_holds_is_left_alone(tmp_path: Path) -> None:
    # A second demo on the same --out deleted the running one's spool and started anyway.
    out = tmp_path / "demo"
    (out / "pacs").mkdir(parents=True)
    (out / demo.DEMO_MARK).write_text("")  # a demo's folder
    (out / "incoming").mkdir()
    running = Spool(out / "spool", 0, exclusive=True)
    try:
        (out / "spool" / "state.sqlite3").write_text("in use")
        cfg = parse_config({"routing": {"rules": [], "cascade": []}})
        with pytest.raises(
            DemoError, match=rf"^--out .*demo: its spool is in use by a running node \(process "
            rf"{os.getpid()}\); wait for that demo to end or give another folder$"
        ):  # fmt: skip
            list(run_demo(cfg, out))
        assert (out / "spool" / "state.sqlite3").read_text() == "in use"
    finally:
        running.close()
    assert Spool.in_use(out / "spool") is None


def test_an_out_folder_holding_anything_else_is_never_wiped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `demo --out /var/lib/dicom-node` must not delete a production spool as leftovers.
    out = tmp_path / "node"
    (out / "spool").mkdir(parents=True)
    (out / "spool" / "state.sqlite3").write_text("precious")
    cfg = parse_config({"routing": {"rules": [], "cascade": []}})
    with pytest.raises(DemoError, match=r"^--out .*node: holds spool that no demo wrote; give "):
        list(run_demo(cfg, out))
    assert (out / "spool" / "state.sqlite3").read_text() == "precious"
    # A demo's own folder (its mark, or the PACS and incoming folders it wrote before the
    # mark existed) is replaced: the run gets past the check (and, with no time to wait for
    # results, stops there).
    monkeypatch.setattr(demo, "WAIT_SECONDS", 0.0)
    monkeypatch.chdir(tmp_path)
    marked, older, site = tmp_path / "marked", tmp_path / demo.DEFAULT_OUT, tmp_path / "site"
    for folder in (marked, older, site):
        (folder / "spool").mkdir(parents=True)
    (marked / demo.DEMO_MARK).write_text("")
    for folder in (older, site):
        (folder / "pacs").mkdir()
        (folder / "incoming").mkdir()
    for folder in (marked, older):
        with pytest.raises(DemoError, match=r"studies got no result within 0 s$"):
            list(run_demo(cfg, folder))
        assert (folder / demo.DEMO_MARK).is_file()
    # Those two names elsewhere are a site's (/srv/dicom/{incoming,pacs,spool}): was wiped.
    (site / "spool" / "state.sqlite3").write_text("precious")
    with pytest.raises(DemoError, match=r"holds spool, incoming, pacs that no demo wrote"):
        list(run_demo(cfg, site))
    assert (site / "spool" / "state.sqlite3").read_text() == "precious"


def test_the_demo_commands_default_folder_is_the_one_it_knows() -> None:
    from dicom_node.cli import _parser

    assert _parser().parse_args(["demo"]).out == str(demo.DEFAULT_OUT)


def test_every_header_of_a_demo_case_tells_of_one_patient_and_one_request(
    tmp_path: Path,
) -> None:
    cases = [c for c in CASES if c.ct or c.request]
    for n, case in enumerate(cases):
        written = _write_case(tmp_path / case.name, SEED + 100 + n, case)
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in written.files]
        keywords = ("PatientSex", "PatientAge", "PatientBirthDate", "PatientSize",
                    "AdditionalPatientHistory")  # fmt: skip
        # Was: the CT series kept another patient's sex, age and birth date.
        assert len({tuple(str(h.get(k, "")) for k in keywords) for h in headers}) == 1
        if case.request:
            said = written.patient.texts.get("AdditionalPatientHistory", "")
            assert said, case.name  # was: no text at all for the osteoarthritis case
            age = written.patient.age_years
            # Was: "18yo M" in the header of a 77-year-old woman.
            assert age is None or str(age) in said, (case.name, said)


def test_a_study_without_a_result_ends_the_demo_in_failure(
    tmp_path: Path, all_engines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was printed as "failed: ..." and the demo still exited 0: `make demo` passed.
    from dicom_node import pipeline
    from dicom_node.errors import ReportError

    real, calls = pipeline.build_results, []

    def first_fails(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise ReportError("a simulated report failure")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "build_results", first_fails)
    cfg = dataclasses.replace(
        Config(), engines=EnginesConfig(cache_dir=all_engines, backend="onnxruntime", threads=2)
    )
    lines: list[str] = []
    with pytest.raises(
        DemoError, match=rf"^1 of {len(CASES)} studies got no result \(see above\)$"
    ):
        for line in run_demo(cfg, tmp_path / "demo"):
            lines.append(line)
    assert "  failed: a simulated report failure" in lines
    assert lines[-1].endswith("not for clinical use")  # the report is printed whole first


def test_a_stale_demo_engine_is_rebuilt_and_a_sites_own_is_used(
    tmp_path: Path, all_engines: Path
) -> None:
    # The demo checked only that the files were intact: a demo engine `engines build` would
    # rebuild (another version, a record its manifest lacks) was served as it was.
    import yaml

    cache = tmp_path / "cache"
    shutil.copytree(all_engines / "hip_screen", cache / "hip_screen")
    cfg = dataclasses.replace(Config(), engines=EnginesConfig(cache_dir=cache))
    assert demo._engines_ready(cfg, ["hip_screen"]) == []  # a site's (test) engine: used
    path = cache / "hip_screen" / "manifest.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["version"] = "0.0.9-demo"  # a demo engine of another release
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert demo._engines_ready(cfg, ["hip_screen", "hipnet"]) == ["hip_screen", "hipnet"]


def test_the_table_prints_findings_as_the_report_does(tmp_path: Path) -> None:
    written = _write_case(tmp_path, SEED, CASES[0])
    hip = {"engine": "hip_screen", "side": "L", "views": "AP", "priority": "NONE",
           "pji_risk": None, "inputs": {}, "reported": [
               {"name": "osteoarthritis", "probability": 0.3996, "shown": "p=0.39",
                "present": False},
               {"name": "normal", "probability": 0.9996, "shown": "p>0.99", "present": True},
           ]}  # fmt: skip
    lines = _table(written, {"priority": "NONE", "hips": [hip]}, 1.0)
    # Was "osteoarthritis 0.40 (below threshold)" under a threshold of 0.4, and "normal 1.00".
    assert lines[-1].endswith("osteoarthritis p=0.39 (below threshold), normal p>0.99")


def test_a_study_is_waited_for_until_every_result_has_left_the_outbox() -> None:
    # The wait ended at the SR, which the outbox sends first: an overlay a few milliseconds
    # behind it was missing from the saved PNGs, and the demo still succeeded.
    from types import SimpleNamespace

    def job(study: str, state: str) -> SimpleNamespace:
        return SimpleNamespace(study_uid=study, state=state)

    jobs = [job("1", "done"), job("2", "done"), job("3", "failed"), job("4", "running")]
    pending = [SimpleNamespace(study_uid="2")]  # its overlay still queued
    state = SimpleNamespace(jobs=lambda: jobs)
    outbox = SimpleNamespace(items=lambda states: pending if states == ("pending",) else [])
    node = SimpleNamespace(state=state, outbox=outbox)
    assert demo._settled(node) == {"1", "3"}  # type: ignore[arg-type]
    pending.clear()
    assert demo._settled(node) == {"1", "2", "3"}  # type: ignore[arg-type]
