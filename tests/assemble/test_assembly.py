"""Study assembly through the running node: grouping across associations and the three timers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from helpers import tiny_image
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.models import StudySummary
from dicom_node.node import Node

StartNode = Callable[..., Node]
CR = "1.2.840.10008.5.1.4.1.1.1"


def associate(node: Node) -> Association:
    ae = AE("PACS")
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="TRIAGE")
    assert assoc.is_established
    return assoc


def store(assoc: Association, study: str) -> None:
    status = assoc.send_c_store(tiny_image(study))
    assert status.Status == 0


def study(node: Node, uid: str) -> StudySummary:
    assert node.state is not None
    return {s.study_uid: s for s in node.state.studies()}[uid]


def wait_complete(node: Node, uid: str, limit: float) -> float:
    """Seconds until ``uid`` is complete (polling); fails after ``limit``."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if study(node, uid).state == "complete":
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"study {uid} not complete after {limit} s")


def test_one_study_over_two_associations_completes_once_after_release(
    start_node: StartNode,
) -> None:
    node = start_node(assembly__quiet_seconds=3, assembly__after_release_seconds=0.3)
    uid = "1.2.826.0.1.3680043.8.498.77"
    first, second = associate(node), associate(node)
    store(first, uid)
    store(second, uid)
    store(first, uid)
    first.release()
    time.sleep(0.6)  # one carrier is still open: the release of the first does not complete it
    assert study(node, uid).state == "receiving"
    assert study(node, uid).open_associations == 1
    store(second, uid)
    second.release()
    elapsed = wait_complete(node, uid, 3)
    assert 0.2 <= elapsed <= 1.0  # after_release_seconds, not quiet_seconds
    summary = study(node, uid)
    assert (summary.instance_count, summary.completions, summary.completion_reason) == (
        4,
        1,
        "released",
    )
    assert node.state is not None
    [job] = node.state.jobs()
    assert (job.study_uid, job.generation, job.instance_count) == (uid, 1, 4)


def test_quiet_period_completes_a_study_whose_association_stays_open(start_node: StartNode) -> None:
    node = start_node(assembly__quiet_seconds=1.0, assembly__after_release_seconds=0.2)
    uid = "1.2.826.0.1.3680043.8.498.78"
    assoc = associate(node)
    try:
        store(assoc, uid)
        sent = time.monotonic()
        wait_complete(node, uid, 3)
        elapsed = time.monotonic() - sent
    finally:
        assoc.release()
    assert 0.9 <= elapsed <= 1.6
    assert study(node, uid).completion_reason == "quiet"


def test_max_wait_forces_a_trickling_study(start_node: StartNode) -> None:
    node = start_node(
        assembly__quiet_seconds=1.0,
        assembly__after_release_seconds=0.2,
        assembly__max_wait_seconds=2.0,
    )
    uid = "1.2.826.0.1.3680043.8.498.79"
    assoc = associate(node)
    try:
        start = time.monotonic()
        while study_state(node, uid) != "complete" and time.monotonic() - start < 4:
            store(assoc, uid)  # one instance every 0.4 s: the quiet period never passes
            time.sleep(0.4)
        elapsed = time.monotonic() - start
    finally:
        assoc.release()
    assert study(node, uid).completion_reason == "max_wait"
    assert 1.9 <= elapsed <= 2.8


def study_state(node: Node, uid: str) -> str | None:
    assert node.state is not None
    rows = {s.study_uid: s.state for s in node.state.studies()}
    return rows.get(uid)


def test_late_instance_reopens_and_makes_a_second_job(start_node: StartNode) -> None:
    node = start_node(assembly__quiet_seconds=1.0, assembly__after_release_seconds=0.1)
    uid = "1.2.826.0.1.3680043.8.498.80"
    assoc = associate(node)
    store(assoc, uid)
    assoc.release()
    wait_complete(node, uid, 3)
    assoc = associate(node)
    store(assoc, uid)
    assoc.release()
    time.sleep(0.05)
    wait_complete(node, uid, 3)
    assert node.state is not None
    assert [(j.generation, j.instance_count) for j in node.state.jobs()] == [(1, 1), (2, 2)]


def slow_sends(assoc: Association, pause: float) -> None:
    """Make the client's socket pause before each PDU it sends (a slow link)."""
    sock = assoc.dul.socket
    assert sock is not None
    original = sock.send

    def send(data: bytes) -> None:
        time.sleep(pause)
        original(data)

    sock.send = send  # type: ignore[method-assign]


def test_an_instance_slower_than_the_quiet_period_is_waited_for(start_node: StartNode) -> None:
    # Its bytes arriving did not count: the study completed mid-instance, its job ran on the
    # instances before it, and the instance reopened it for a second job.
    node = start_node(
        node__max_pdu=65536, assembly__quiet_seconds=1.0, assembly__after_release_seconds=0.2
    )
    uid = "1.2.826.0.1.3680043.8.498.81"
    assoc = associate(node)
    try:
        store(assoc, uid)
        slow_sends(assoc, 0.15)  # ~13 PDUs of 64 KiB: ~2 s for the 800 KB instance
        started = time.monotonic()
        status = assoc.send_c_store(tiny_image(uid, size=640))
        assert status.Status == 0
        assert time.monotonic() - started > 1.5  # longer than the quiet period
    finally:
        assoc.release()
    wait_complete(node, uid, 3)
    assert node.state is not None
    [job] = node.state.jobs()
    assert (job.generation, job.instance_count, job.reason) == (1, 2, "released")


def test_a_study_waits_for_the_instance_its_ended_association_is_storing(
    start_node: StartNode,
) -> None:
    # The peer gave up (its DIMSE timeout) while the node was still writing its instance:
    # the end released the study at once, a job ran without that instance, and the
    # instance then opened an episode that waited out the quiet period for a second job.
    node = start_node(assembly__quiet_seconds=3.0, assembly__after_release_seconds=0.3)
    uid = "1.2.826.0.1.3680043.8.498.82"
    assert node.spool is not None
    write = node.spool.write
    slow = threading.Event()

    def slow_write(*args: Any, **kwargs: Any) -> None:
        if slow.is_set():
            time.sleep(1.0)  # a slow fsync
        write(*args, **kwargs)

    node.spool.write = slow_write  # type: ignore[method-assign]
    assoc = associate(node)
    store(assoc, uid)
    slow.set()
    sender = threading.Thread(target=assoc.send_c_store, args=(tiny_image(uid),), daemon=True)
    sender.start()
    time.sleep(0.3)  # the instance is being written
    assoc.abort()
    ended = time.monotonic()
    wait_complete(node, uid, 4)
    assert time.monotonic() - ended < 2.0  # after the write and after_release, not quiet
    sender.join(5)
    time.sleep(0.5)  # a second job would be made by now
    assert node.state is not None
    [job] = node.state.jobs()
    assert (job.generation, job.instance_count, job.reason) == (1, 2, "released")
