"""The pipeline worker inside a running node: results for good studies, clear failures for bad ones."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_clients import send_files
from helpers import FORCE_FINDINGS, SCREEN_RULE, pipeline_config
from orthanc import wait_for
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from dicom_node import pipeline as pipeline_module
from dicom_node.errors import ConfigError, SpoolFullError, StateError
from dicom_node.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.infer import EngineSet
from dicom_node.models import Job
from dicom_node.node import Node
from dicom_node.pipeline import Pipeline, engines_needed
from dicom_node.state import State
from dicom_node.synthetic import StudyIdentity, make_ct_series, write
from engines.phantoms.studies import write_study
from engines.runtimes import EngineRuntimeError


def scrape(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def finished(node: Node, count: int) -> list[Job]:
    if node.state is None:
        raise AssertionError("node is not running")

    def done() -> list[Job] | None:
        jobs = [j for j in node.state.jobs() if j.state != "pending"]  # type: ignore[union-attr]
        return jobs if len(jobs) >= count else None

    return wait_for(done, 60, f"{count} finished jobs")


@pytest.fixture
def results_node(tmp_path: Path, engine_cache: Path) -> Callable[..., Node]:
    nodes: list[Node] = []

    def start(**dotted: object) -> Node:
        (tmp_path / "out").mkdir(exist_ok=True)
        cfg = pipeline_config(
            tmp_path / "spool", engine_cache, triage=FORCE_FINDINGS,
            destinations=[{"name": "files", "type": "folder", "path": str(tmp_path / "out")}],
            **dotted,
        )  # fmt: skip
        node = Node(cfg)
        node.start()
        nodes.append(node)
        return node

    yield start  # type: ignore[misc]
    for node in nodes:
        node.stop(drain_seconds=1)


def test_bad_pixel_data_fails_its_study_and_the_next_study_still_gets_results(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = results_node()
    bad = write_study(
        tmp_path / "bad", 501, "normal", "normal", size=64, transfer_syntax=JPEG2000Lossless
    )
    ds = pydicom.dcmread(bad.files[0])
    # A JPEG 2000 frame of garbage: well-formed encapsulation the node accepts (it never
    # decodes on receipt), but no codec can decode it.
    ds.PixelData = encapsulate([bytes(range(256)) * 8])
    write(ds, bad.files[0])
    good = write_study(tmp_path / "good", 502, "osteoarthritis", "normal", size=64)
    assert send_files(node.port, list(bad.files)) == [0]  # accepted: it is valid DICOM
    assert send_files(node.port, list(good.files)) == [0]
    jobs = {j.study_uid: j for j in finished(node, 2)}
    failed = jobs[bad.identity.study_uid]
    assert failed.state == "failed"
    assert ds.SOPInstanceUID in (failed.error or "") and "pixel data" in (failed.error or "")
    done = jobs[good.identity.study_uid]
    assert done.state == "done" and done.priority == "URGENT"
    summary = json.loads(done.summary or "{}")
    assert {(h["engine"], h["side"]) for h in summary["hips"]} == {
        ("hip_screen", "R"),
        ("hip_screen", "L"),
        ("hipnet", "R"),
        ("hipnet", "L"),
    }
    # The folder destination got the SR and both overlays of the good study only.
    out = tmp_path / "out"
    wait_for(lambda: len(list(out.rglob("*.dcm"))) == 3 or None, 20, "three result files")
    assert [p.name for p in out.iterdir()] == [good.identity.study_uid]
    # hip_screen's and Hip-Net's overlays: a series each, each numbered from 1 (was 1, 2).
    overlays = [d for d in map(pydicom.dcmread, out.rglob("*.dcm")) if d.Modality != "SR"]
    assert len({str(d.SeriesInstanceUID) for d in overlays}) == 2
    assert [int(d.InstanceNumber) for d in overlays] == [1, 1]
    # Every file names the node as its writer, as the conformance statement says (was
    # highdicom's Implementation Class UID and Version Name).
    for delivered in map(pydicom.dcmread, out.rglob("*.dcm")):
        meta = delivered.file_meta
        assert (meta.ImplementationClassUID, meta.ImplementationVersionName) == (
            IMPLEMENTATION_CLASS_UID,
            IMPLEMENTATION_VERSION_NAME,
        )
    # The failure is counted, and the node is ready (its only destination is a folder).
    sent = 'dicom_node_send_attempts_total{destination="files",result="sent"} 3.0'

    def counted() -> str | None:
        text = scrape(node.http_port, "/metrics")
        return text if sent in text else None

    metrics = wait_for(counted, 10, "three deliveries counted")
    assert 'dicom_node_job_failures_total{reason="pixel_data"} 1.0' in metrics
    assert 'dicom_node_jobs_total{outcome="done"} 1.0' in metrics
    assert 'dicom_node_study_priority_total{priority="URGENT"} 1.0' in metrics
    assert (
        'dicom_node_instances_received_total{calling_ae="PACS",'
        'sop_class="Digital X-Ray Image Storage - For Presentation"} 2.0'
    ) in metrics
    assert (
        'dicom_node_engine_info{backend="onnxruntime",name="hipnet",version="0.0.1-test"} 1.0'
        in metrics
    )
    assert (
        'dicom_node_inference_seconds_count{backend="onnxruntime",engine="hip_screen"} 1.0'
        in metrics
    )
    assert "dicom_node_time_to_result_seconds_count" in metrics
    assert json.loads(scrape(node.http_port, "/readyz")) == {"ready": True, "not_ready": {}}
    metrics = scrape(node.http_port, "/metrics")
    assert "dicom_node_ready 1.0" in metrics
    assert 'dicom_node_destination_up{destination="files"} 1.0' in metrics


def test_a_study_no_rule_selects_is_skipped(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    import numpy as np

    node = results_node()
    identity = StudyIdentity.synthetic(7)
    series = make_ct_series(np.zeros((2, 16, 16)), identity=identity)
    files = [write(ds, tmp_path / f"ct{n}.dcm") for n, ds in enumerate(series)]
    assert send_files(node.port, files) == [0, 0]
    [job] = finished(node, 1)
    assert (job.state, job.error) == ("skipped", "no routing rule selected an image of this study")
    assert node.outbox is not None and node.outbox.depth() == {"pending": 0, "sent": 0, "dead": 0}


def pending_study(node: Node, tmp_path: Path, seed: int) -> Node:
    """``node`` with its own pipeline stopped (the test drives one by hand) and one phantom
    study received and complete: its job pending."""
    if node.state is None or node.spool is None:
        raise AssertionError("node is not running")
    if node.pipeline is not None:
        node.pipeline.stop()
    study = write_study(tmp_path / "s", seed, "normal", "normal", size=64)
    assert send_files(node.port, list(study.files)) == [0]
    wait_for(lambda: node.state.jobs("pending") or None, 30, "a pending job")  # type: ignore[union-attr]
    return node


class FailingEngines(EngineSet):
    """The real engines, except that inference fails as a Triton server away would."""

    def predict(self, name, items):  # type: ignore[no-untyped-def]
        raise EngineRuntimeError("triton at 127.0.0.1:8001 is unavailable")


def run_with(node: Node, engine_set: type[EngineSet]) -> Job:
    """Run ``node``'s one pending job twice (the second run: only if it is due again) with
    ``engine_set`` instead of the real engines; the job afterwards."""
    engines = engine_set(node.config.engines, engines_needed(node.config))
    try:
        pipeline = Pipeline(node.config, node.state, node.spool, engines)
        assert pipeline.run_pending() == 1
        assert pipeline.run_pending() == 0  # a retried job waits for its retry time
    finally:
        engines.close()
    [job] = node.state.jobs()  # type: ignore[union-attr]
    return job


def test_an_engine_that_cannot_run_leaves_the_job_pending_for_a_retry(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    job = run_with(pending_study(results_node(), tmp_path, 503), FailingEngines)
    assert job.state == "pending"  # kept for the retry


class HipNetDown(EngineSet):
    """The real engines, except Hip-Net, whose Triton server is away."""

    def predict(self, name, items):  # type: ignore[no-untyped-def]
        if name == "hipnet":
            raise EngineRuntimeError("hipnet on triton at 127.0.0.1:8001: unavailable")
        return super().predict(name, items)


def test_on_the_last_try_an_engine_that_cannot_run_leaves_its_hips_out(
    results_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was: the job failed after its last try, and the screening engine's findings for the
    # same study (an urgent fracture, say) were lost with Hip-Net's.
    monkeypatch.setattr(pipeline_module, "_MAX_ENGINE_RETRIES", 1)  # the first try is the last
    dual = {"name": "dual", "engine": "hipnet", "when": {"Modality": ["DX"]}}
    node = results_node(routing={"rules": [SCREEN_RULE, dual], "cascade": []})
    pending_study(node, tmp_path, 504)
    engines = HipNetDown(node.config.engines, engines_needed(node.config))
    try:
        pipeline = Pipeline(node.config, node.state, node.spool, engines)  # type: ignore[arg-type]
        assert pipeline.run_pending() == 1
    finally:
        engines.close()
    [job] = node.state.jobs()  # type: ignore[union-attr]
    assert (job.state, job.error) == ("done", None)
    registry = pipeline.metrics.registry  # the alert DicomNodePartialReports reads these
    for reason, count in (("engine", 1), ("pixel_data", 0)):
        sample = registry.get_sample_value("dicom_node_partial_reports_total", {"reason": reason})
        assert sample == count, reason
    recorded = json.loads(job.summary or "{}")
    assert {h["engine"] for h in recorded["hips"]} == {"hip_screen"}
    [left_out] = recorded["not_analysed"]
    assert left_out["why"] == (
        "hipnet could not analyse hip R+L: hipnet on triton at 127.0.0.1:8001: unavailable"
    )
    outputs = node.config.storage.spool_dir / "outputs"
    [sr] = [p for p in outputs.rglob("*.dcm") if pydicom.dcmread(p).Modality == "SR"]
    assert pydicom.dcmread(sr).CompletionFlag == "PARTIAL"


class BuggyEngines(EngineSet):
    """The real engines, except that inference hits a bug in another library whose message
    quotes a header value it was given."""

    def predict(self, name, items):  # type: ignore[no-untyped-def]
        raise ValueError("could not convert string to float: 'DOE^JANE'")


def test_a_study_uid_shared_by_two_patients_gets_no_report(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    # One SR would have carried both patients' hips under the first one's name.
    node = results_node()
    first = write_study(tmp_path / "a", 503, "normal", "normal", size=64)
    second = write_study(tmp_path / "b", 504, "osteoarthritis", "normal", size=64)
    ds = pydicom.dcmread(second.files[0])
    other_id = str(ds.PatientID)
    assert other_id != str(pydicom.dcmread(first.files[0]).PatientID)
    ds.StudyInstanceUID = first.identity.study_uid  # a modality that reused the UID
    write(ds, second.files[0])
    assert send_files(node.port, [*first.files, *second.files]) == [0, 0]
    (job,) = finished(node, 1)
    assert job.state == "failed"
    assert (job.error or "").startswith("instances of 2 patients (Patient ID and Issuer)")
    assert other_id not in (job.error or "")
    assert not list((tmp_path / "out").rglob("*.dcm"))
    metrics = scrape(node.http_port, "/metrics")
    assert 'dicom_node_job_failures_total{reason="patients"} 1.0' in metrics


def test_an_internal_error_fails_the_job_without_the_values_it_quotes(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    job = run_with(pending_study(results_node(), tmp_path, 507), BuggyEngines)
    assert job.state == "failed"
    assert job.error == "internal error: ValueError: could not convert string to float: '…'"


def test_a_done_job_stays_done_when_recording_it_fails(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    # After the results are committed nothing may turn the job into 'failed': the results
    # are queued and will be sent.
    node = pending_study(results_node(), tmp_path, 504)
    engines = EngineSet(node.config.engines, engines_needed(node.config))

    def wake_a_stopped_sender() -> None:
        raise RuntimeError("the sender is gone")

    try:
        pipeline = Pipeline(
            node.config, node.state, node.spool, engines, on_results=wake_a_stopped_sender
        )
        assert pipeline.run_pending() == 1
    finally:
        engines.close()
    [job] = node.state.jobs()
    assert (job.state, job.error) == ("done", None)
    assert node.outbox is not None and node.outbox.depth()["pending"] >= 1


@pytest.mark.parametrize("failures", [1, 3])
def test_a_state_database_that_cannot_be_written_makes_the_job_wait_not_fail(
    results_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    failures: int,
) -> None:  # fmt: skip
    # Locked past its busy timeout, a full disk: was "internal error" (one failure), or with
    # the failure write failing too, rounds that each used up a crash start until the job
    # failed as "interrupted 2 times" though nothing had stopped or crashed.
    node = pending_study(results_node(), tmp_path, 509)
    state = node.state
    assert state is not None
    real = state.finish_job
    left = [failures]

    def locked(*args: object, **kwargs: object) -> None:
        if left[0]:
            left[0] -= 1
            raise StateError(f"{state.path}: database is locked")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(state, "finish_job", locked)
    monkeypatch.setattr(pipeline_module, "STATE_RETRY_SECONDS", 0.0)
    engines = EngineSet(node.config.engines, engines_needed(node.config))
    try:
        pipeline = Pipeline(node.config, state, node.spool, engines)
        for _ in range(failures + 1):
            pipeline.run_pending()
    finally:
        engines.close()
    [job] = state.jobs()
    assert (job.state, job.error) == ("done", None)
    assert node.outbox is not None and node.outbox.depth()["pending"] >= 1


def test_an_engine_closed_under_a_job_leaves_it_pending(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = pending_study(results_node(), tmp_path, 505)
    engines = EngineSet(node.config.engines, engines_needed(node.config))
    pipeline = Pipeline(node.config, node.state, node.spool, engines)
    engines.close()  # the stop closed them before this job ran
    assert pipeline.run_pending() == 1
    [job] = node.state.jobs()
    assert job.state == "pending"  # for the next start, not failed


def test_engines_closed_between_analysis_and_report_leave_the_job_pending(
    results_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop that outwaits a job closes the engines under it: closed after the analysis,
    # the report's manifests came out empty and the job failed for good (KeyError).
    node = pending_study(results_node(), tmp_path, 509)
    engines = EngineSet(node.config.engines, engines_needed(node.config))
    analyse = pipeline_module.analyse_study

    def analyse_then_stop(*args: Any, **kwargs: Any) -> Any:
        analysis = analyse(*args, **kwargs)
        engines.close()
        return analysis

    monkeypatch.setattr(pipeline_module, "analyse_study", analyse_then_stop)
    assert node.state is not None and node.spool is not None
    assert Pipeline(node.config, node.state, node.spool, engines).run_pending() == 1
    [job] = node.state.jobs()
    assert (job.state, job.error) == ("pending", None)


def test_a_second_signal_ends_the_stops_wait_for_a_job_in_hand(
    results_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stop was inside the pipeline's 30 s join when the second signal came, and a
    # join's timeout is taken when it begins: the forced stop still took the 30 s.
    started, release = threading.Event(), threading.Event()
    analyse = pipeline_module.analyse_study

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(60)
        return analyse(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "analyse_study", slow)
    node = results_node()
    study = write_study(tmp_path / "s", 510, "normal", "normal", size=64)
    assert send_files(node.port, list(study.files)) == [0]
    assert started.wait(30)
    stopper = threading.Thread(target=node.stop, kwargs={"drain_seconds": 0})
    began = time.monotonic()
    stopper.start()
    try:
        time.sleep(0.5)  # the stop waits for the job
        node._signals = 2  # as after a second SIGTERM
        stopper.join(10)
        took = time.monotonic() - began
    finally:
        release.set()
    assert not stopper.is_alive() and took < 3
    state = State(tmp_path / "spool" / "state.sqlite3", node.config.assembly)
    try:
        [job] = state.jobs()
        assert (job.state, job.runs) == ("pending", 0)  # runs again at the next start
    finally:
        state.close()


def test_a_study_whose_runs_were_cut_short_twice_fails_instead_of_running_again(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    # A study that takes the node down (out of memory mid-inference) would otherwise run
    # first at every start, and take it down again.
    node = pending_study(results_node(), tmp_path, 506)
    assert node.state is not None and node.spool is not None
    [job] = node.state.jobs("pending")
    node.state.start_job(job.id, 1.0)  # two starts that never ended: crashes
    node.state.start_job(job.id, 2.0)
    engines = EngineSet(node.config.engines, engines_needed(node.config))
    try:
        assert Pipeline(node.config, node.state, node.spool, engines).run_pending() == 1
    finally:
        engines.close()
    [job] = node.state.jobs()
    assert job.state == "failed"
    assert job.error is not None and job.error.startswith("interrupted 2 times")


def test_a_job_superseded_by_a_late_instance_is_skipped_and_the_later_job_runs(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = pending_study(results_node(), tmp_path, 508)
    assert node.state is not None and node.spool is not None
    [first] = node.state.jobs("pending")
    late = pydicom.dcmread(next((tmp_path / "s").rglob("*.dcm")))
    late.SOPInstanceUID = f"2.25.{uuid.uuid4().int}"
    write(late, tmp_path / "late.dcm")
    assert send_files(node.port, [tmp_path / "late.dcm"]) == [0]  # reopens the study
    state = node.state

    def two_pending() -> list[Job] | None:
        jobs = state.jobs("pending")
        return jobs if len(jobs) == 2 else None

    [_, second] = wait_for(two_pending, 30, "the later job")
    assert (second.generation, second.instance_count) == (2, first.instance_count + 1)
    engines = EngineSet(node.config.engines, engines_needed(node.config))
    try:
        assert Pipeline(node.config, node.state, node.spool, engines).run_pending() == 2
    finally:
        engines.close()
    skipped = node.state.job(first.id)
    assert skipped.state == "skipped"  # was: both analysed the same instances
    assert skipped.error is not None and skipped.error.startswith("superseded: ")
    assert node.state.job(second.id).state == "done"


def test_a_rerun_reports_as_the_newer_version_of_the_studys_report(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    # A study reopened by a late image got a second SR numbered 1 beside the first, with
    # nothing saying which one replaces which.
    node = pending_study(results_node(), tmp_path, 509)
    assert node.state is not None and node.spool is not None
    engines = EngineSet(node.config.engines, engines_needed(node.config))
    try:
        pipeline = Pipeline(node.config, node.state, node.spool, engines)
        assert pipeline.run_pending() == 1

        def reports() -> list[pydicom.Dataset]:
            assert node.spool is not None
            paths = (node.spool.root / "outputs").rglob("*.dcm")
            return [d for d in map(pydicom.dcmread, paths) if d.Modality == "SR"]

        [first] = reports()
        assert first.InstanceNumber == 1 and "PredecessorDocumentsSequence" not in first
        observer = [i for i in first.ContentSequence if i.ValueType == "UIDREF"]
        assert [str(i.UID) for i in observer] == [node.state.device_uid()]  # this node's own
        # An SR a job wrote and never recorded (a crash before its outcome, the job then
        # superseded): no PACS got it, and the next report named it as the one it replaces.
        stray = next(
            d for d in map(pydicom.dcmread, (node.spool.root / "outputs").rglob("*.dcm"))
            if d.Modality == "SR"
        )  # fmt: skip
        stray.SOPInstanceUID = f"2.25.{uuid.uuid4().int}"
        stray.save_as(
            node.spool.root / "outputs" / first.StudyInstanceUID / f"{stray.SOPInstanceUID}.dcm"
        )
        late = pydicom.dcmread(next((tmp_path / "s").rglob("*.dcm")))
        late.SOPInstanceUID = f"2.25.{uuid.uuid4().int}"  # a second AP: another result
        write(late, tmp_path / "late.dcm")
        assert send_files(node.port, [tmp_path / "late.dcm"]) == [0]  # reopens the study
        wait_for(lambda: node.state.jobs("pending") or None, 30, "the rerun's job")  # type: ignore[union-attr]
        assert pipeline.run_pending() == 1
    finally:
        engines.close()
    [second] = [
        r for r in reports() if r.SOPInstanceUID not in (first.SOPInstanceUID, stray.SOPInstanceUID)
    ]
    assert second.InstanceNumber == 2
    [study] = second.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    [series] = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    [item] = series.ReferencedSOPSequence
    assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (
        first.SOPClassUID,
        first.SOPInstanceUID,
    )


class HeldEngines(EngineSet):
    """The real engines, except that inference waits until released, then finds them closed
    (as a stop that ran out of time closes them under the job)."""

    entered = threading.Event()
    release = threading.Event()

    def predict(self, name, items):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.release.wait(30)
        raise EngineRuntimeError("runtime is closed")


def test_a_stop_in_the_middle_of_a_job_is_not_counted_as_a_crash(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = pending_study(results_node(), tmp_path, 509)
    assert node.state is not None and node.spool is not None
    engines = HeldEngines(node.config.engines, engines_needed(node.config))
    pipeline = Pipeline(node.config, node.state, node.spool, engines)
    try:
        pipeline.start()
        thread = pipeline._thread
        assert HeldEngines.entered.wait(30)
        [job] = node.state.jobs("pending")
        assert job.runs == 1  # started
        pipeline.stop(timeout=0.1)  # the job does not finish in time
        # Two such stops (deploys) used to fail the study as "interrupted 2 times".
        assert node.state.job(job.id).runs == 0
    finally:
        HeldEngines.release.set()
        if thread is not None:
            thread.join(30)
        engines.close()
    assert node.state.job(job.id).state == "pending"


def test_results_that_cannot_be_written_for_want_of_space_wait_for_a_retry(
    results_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = pending_study(results_node(), tmp_path, 510)
    assert node.state is not None and node.spool is not None

    def full(relative: str, parts: object) -> None:
        raise SpoolFullError(f"spool file system is full writing {relative}")

    monkeypatch.setattr(node.spool, "write", full)
    job = run_with(node, EngineSet)  # run once, then not again before its retry time
    # Was: failed for good ("spool"), its results lost until the study was resent.
    assert (job.state, job.runs, job.error) == ("pending", 0, None)


def test_a_cascade_finding_the_engines_manifest_lacks_stops_the_start(
    engine_cache: Path, tmp_path: Path
) -> None:
    # A site's screening engine that spells the prosthesis class "tha": the default cascade
    # (after total_hip_arthroplasty, run hipnet) would never start Hip-Net, and nothing said so.
    cache = tmp_path / "engines"
    shutil.copytree(engine_cache / "hip_screen", cache / "hip_screen")
    (cache / "hipnet").symlink_to(engine_cache / "hipnet", target_is_directory=True)
    manifest = cache / "hip_screen" / "manifest.yaml"
    text = manifest.read_text()
    assert "name: total_hip_arthroplasty" in text
    manifest.write_text(text.replace("name: total_hip_arthroplasty", "name: tha"))
    node = Node(pipeline_config(tmp_path / "spool", cache))
    with pytest.raises(
        ConfigError,
        match=r"^routing\.cascade\[0\]\.finding: not a class of hip_screen \(normal, .*, tha, .*\), "
        r"got 'total_hip_arthroplasty'$",
    ):
        node.start()
    with pytest.raises(RuntimeError, match=r"^node is not started$"):
        _ = node.port  # what it had started is stopped again


def test_a_correction_undone_gets_a_report_that_is_sent(
    results_node: Callable[..., Node], tmp_path: Path
) -> None:
    # DOE^JANE, corrected to DOE^JOAN, then the correction undone: the third report has
    # the first one's content; it got the first one's UID, so nothing was queued and the
    # PACS's latest report named DOE^JOAN.
    node = results_node()
    study = write_study(tmp_path / "s", 511, "normal", "normal", size=64)
    for count, name in enumerate(["DOE^JANE", "DOE^JOAN", "DOE^JANE"], 1):
        files = []
        (tmp_path / f"{count}").mkdir()
        for path in study.files:
            ds = pydicom.dcmread(path)
            ds.PatientName = name
            files.append(write(ds, tmp_path / f"{count}" / path.name))
        assert send_files(node.port, files) == [0] * len(files)
        finished(node, count)

    def delivered() -> list[pydicom.Dataset] | None:
        reports = [
            d for d in map(pydicom.dcmread, (tmp_path / "out").rglob("*.dcm")) if d.Modality == "SR"
        ]
        return reports if len(reports) == 3 else None

    reports = sorted(wait_for(delivered, 30, "three reports"), key=lambda d: d.InstanceNumber)
    assert [str(r.PatientName) for r in reports] == ["DOE^JANE", "DOE^JOAN", "DOE^JANE"]
    assert [r.InstanceNumber for r in reports] == [1, 2, 3]
    assert len({r.SOPInstanceUID for r in reports}) == 3
