"""The product's loop with a real PACS: Orthanc autoroutes hip studies to the node, the node
sends an SR and heat-map Secondary Captures back into the same studies.

Orthanc (Debian's, one JSON config, a Lua OnStoredInstance hook) routes DX/CR to the node
and skips what the node's AE title sends, so our results are never routed back.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pydicom
import pytest
from helpers import FORCE_FINDINGS, pipeline_config
from orthanc import Orthanc, RouteTarget, run_orthanc, storescu_into

from dicom_node.node import Node
from engines.phantoms.studies import PhantomStudy, write_study

pytestmark = pytest.mark.skipif(
    shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").exists(),
    reason="Orthanc is not installed (make test installs it)",
)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def phantom_studies(folder: Path) -> list[PhantomStudy]:
    return [
        write_study(folder / "a", 101, "normal", "normal", size=64),
        write_study(folder / "b", 102, "femoral_neck_fracture", "osteoarthritis", size=64),
        write_study(
            folder / "c",
            103,
            "normal",
            "total_hip_arthroplasty",
            failure={"L": "aseptic_loosening"},
            size=64,
        ),
    ]


def objects_in(orthanc: Orthanc, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    by_class: dict[str, list[pydicom.Dataset]] = {}
    for tags in orthanc.study_instances(study_uid):
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(tags["ID"])))
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    return by_class


@pytest.fixture
def loop(tmp_path: Path, engine_cache: Path) -> Iterator[Callable[..., tuple[Node, Orthanc]]]:
    """Start Orthanc and a node that knows each other; both are stopped afterwards."""
    stack: list[Callable[[], None]] = []

    def start(**dotted: object) -> tuple[Node, Orthanc]:
        from orthanc import free_port

        node_port = free_port()
        orthanc_cm = run_orthanc(
            tmp_path / "orthanc",
            route_to=RouteTarget("TRIAGE", "127.0.0.1", node_port),
            skip_calling_aes=("TRIAGE",),
        )
        orthanc = orthanc_cm.__enter__()
        stack.append(lambda: orthanc_cm.__exit__(None, None, None))
        cfg = pipeline_config(
            tmp_path / "spool",
            engine_cache,
            node={"host": "127.0.0.1", "port": node_port, "drain_seconds": 2},
            destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                           "port": orthanc.dicom_port}],
            **dotted,
        )  # fmt: skip
        node = Node(cfg)
        node.start()
        stack.append(lambda: node.stop(drain_seconds=1))
        return node, orthanc

    yield start
    for stop in reversed(stack):
        stop()


def test_studies_through_orthanc_get_one_sr_and_their_overlays_back(
    loop: Callable[..., tuple[Node, Orthanc]], tmp_path: Path
) -> None:
    node, orthanc = loop(triage=FORCE_FINDINGS)
    studies = phantom_studies(tmp_path / "studies")
    for study in studies:
        storescu_into(orthanc, list(study.files))
    sent = sum(len(s.files) for s in studies)

    def delivered() -> bool:
        counts = [objects_in(orthanc, s.identity.study_uid) for s in studies]
        return all(len(c.get(SR_CLASS, [])) == 1 and len(c.get(SC_CLASS, [])) == 2 for c in counts)

    orthanc.wait_for(delivered, 120, "one SR and two overlays in every study")
    for study in studies:
        objects = objects_in(orthanc, study.identity.study_uid)
        [sr] = objects[SR_CLASS]
        assert sr.StudyInstanceUID == study.identity.study_uid
        assert sr.PatientID == pydicom.dcmread(study.files[0]).PatientID
        # Every hip was forced URGENT (femoral neck fracture over a 0.01 threshold).
        assert sr.SeriesDescription.startswith("AI triage URGENT")
        evidence = {
            ref.ReferencedSOPInstanceUID
            for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        }
        ap = pydicom.dcmread(study.files[0])
        assert ap.SOPInstanceUID in evidence
        for sc in objects[SC_CLASS]:
            assert sc.BurnedInAnnotation == "YES"
            assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ap.SOPInstanceUID
            assert sc.DerivationCodeSequence[0].CodeValue in {"130403", "130402"}
    # The study with a lateral view fed Hip-Net both views of that hip.
    job_summaries = [j.summary for j in node.state.jobs("done")] if node.state else []
    assert any('"views": "AP+LATERAL"' in (s or "") for s in job_summaries)
    # Nothing the node produced came back into it: it holds exactly what the PACS routed.
    assert node.state is not None and node.state.instance_count() == sent
    skipped = [
        line for line in orthanc.log_text().splitlines() if "skip" in line and "from=TRIAGE" in line
    ]
    assert len(skipped) == 3 * 3  # an SR and two SCs per study, none routed


def _received(node: Node, *studies: PhantomStudy) -> bool:
    assert node.state is not None
    counts = {s.study_uid: s.instance_count for s in node.state.studies()}
    return all(counts.get(s.identity.study_uid) == len(s.files) for s in studies)


def _route_while_down(orthanc: Orthanc, study: PhantomStudy) -> None:
    """Store ``study`` into Orthanc while the node is not running: a Failure job each."""
    storescu_into(orthanc, list(study.files))

    def failures() -> list[str] | None:
        jobs = [j["Type"] for j in orthanc.get("/jobs?expand") if j["State"] == "Failure"]
        return jobs if len(jobs) == len(study.files) else None

    assert orthanc.wait_for(failures, 10, "a failed job per instance") == [
        "DicomModalityStore"
    ] * len(study.files)


@pytest.mark.parametrize("restart", [False, True], ids=["same-run", "orthanc-restarted"])
def test_a_study_routed_while_the_node_is_down_reaches_it_once_it_is_back(
    tmp_path: Path, restart: bool
) -> None:
    # Lua's SendToModality logged the failed send and called its job a success: the study
    # never reached the node and nothing said so. The route's store jobs now fail visibly,
    # and their instances are sent again when a later routing job succeeds; after an
    # Orthanc restart, the Failure jobs kept in its history (SaveJobs) are resubmitted.
    from helpers import config_for
    from orthanc import free_port, wait_for

    target = RouteTarget("TRIAGE", "127.0.0.1", free_port())
    down = write_study(tmp_path / "down", 201, "normal", "normal", size=64)
    later = write_study(tmp_path / "later", 202, "normal", "normal", size=64)
    work = tmp_path / "orthanc"
    with ExitStack() as stack:
        orthanc = stack.enter_context(
            run_orthanc(work, route_to=target, skip_calling_aes=("TRIAGE",))
        )
        _route_while_down(orthanc, down)
        if restart:
            stack.close()  # Orthanc stops, its failed jobs kept in its database
            orthanc = stack.enter_context(
                run_orthanc(work, route_to=target, skip_calling_aes=("TRIAGE",))
            )
        node = Node(config_for(tmp_path / "spool", node__port=target.port))
        node.start()
        stack.callback(node.stop, drain_seconds=1)
        storescu_into(orthanc, list(later.files))
        wait_for(lambda: _received(node, down, later), 30, "both studies on the node")
        if restart:
            orthanc.wait_for_log(
                r"instance \S+ failed before Orthanc started \(1 sends\); sent again"
            )
        else:
            orthanc.wait_for_log(r"instance \S+ of routing job \S+ sent again by job \S+")
