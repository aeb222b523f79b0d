"""The durable outbox over a real SQLite state: due rows, backoff, dead letters, requeue."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from dicom_node.config import AssemblyConfig
from dicom_node.config_results import SendingConfig
from dicom_node.errors import StateError
from dicom_node.models import Header, Job, ReceivedInstance, ResultObject
from dicom_node.send.outbox import STATES, DestinationLane, Outbox, backoff_seconds
from dicom_node.state import State

RULES = AssemblyConfig(quiet_seconds=5, after_release_seconds=1, max_wait_seconds=60)
SR = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"
CFG = SendingConfig(max_attempts=4, backoff_seconds=2.0, max_backoff_seconds=5.0)


def finished_job(
    state: State,
    study: str,
    now: float,
    results: Sequence[ResultObject],
    destinations: Sequence[str] = ("pacs",),
) -> Job:
    """A study received, released and completed; its job done at ``now`` with ``results``."""
    header = Header(
        "1.2.840.10008.5.1.4.1.1.1", study + ".1", study, study + ".2", "DX", "", "", True
    )
    received = ReceivedInstance(
        header, "1.2.840.10008.1.2.1", "PACS", "a#1", f"instances/{study}.dcm", 10, now - 50, False
    )
    state.record_instance(received, True, "new")
    state.release({study}, now - 50)
    [job] = state.complete_due(now - 10)
    state.finish_job(job.id, "done", now, results=results, destinations=destinations)
    return job


def result(sop: str, kind: str = "sr") -> ResultObject:
    return ResultObject(sop, SR if kind == "sr" else SC, f"outputs/{sop}.dcm", kind)


def test_due_returns_pending_rows_whose_time_has_come_oldest_first(state: State) -> None:
    outbox = Outbox(state, CFG)
    late = finished_job(state, "1.2.1", 130.0, [result("1.2.1.100")])
    early = finished_job(state, "1.2.2", 100.0, [result("1.2.2.100"), result("1.2.2.101", "sc")])
    assert outbox.due(99.9) == []
    assert [i.sop_instance_uid for i in outbox.due(120.0)] == ["1.2.2.100", "1.2.2.101"]
    due = outbox.due(130.0)
    # Oldest (earliest next attempt) first, then by id: the later job's row comes last
    # although it was inserted first.
    assert [i.sop_instance_uid for i in due] == ["1.2.2.100", "1.2.2.101", "1.2.1.100"]
    assert [i.job_id for i in due] == [early.id, early.id, late.id]
    first = due[0]
    assert (first.study_uid, first.sop_class_uid, first.path, first.destination) == (
        "1.2.2",
        SR,
        "outputs/1.2.2.100.dcm",
        "pacs",
    )
    assert (first.state, first.attempts, first.next_attempt_at, first.last_error) == (
        "pending",
        0,
        100.0,
        None,
    )
    assert (first.created_at, first.sent_at) == (100.0, None)
    assert [i.sop_instance_uid for i in outbox.due(130.0, limit=2)] == ["1.2.2.100", "1.2.2.101"]
    assert outbox.next_due() == 100.0


def test_a_superseded_report_waiting_out_a_backoff_goes_before_the_one_replacing_it(
    state: State,
) -> None:
    # The PACS was down: the first report waits out its backoff. A late image reopens the
    # study and the rerun's report (which names the first as its predecessor) is due at
    # once; sent first, it was followed by the report it replaces.
    outbox = Outbox(state, CFG)
    first = finished_job(state, "1.2.1", 100.0, [result("1.2.1.100")])
    [old] = outbox.due(100.0)
    outbox.mark_failed(old.id, 100.0, "PACS down")  # next attempt at 101-102
    outbox.mark_failed(old.id, 101.0, "PACS down")  # next attempt at 103-105
    header = Header("1.2.840.10008.5.1.4.1.1.1", "1.2.1.9", "1.2.1", "1.2.1.2", "DX", "", "", True)
    state.record_instance(ReceivedInstance(header, "1.2.840.10008.1.2.1", "PACS", "a#2",
                                           "instances/late.dcm", 10, 101.5, False), True, "new")  # fmt: skip
    state.release({"1.2.1"}, 101.5)
    [rerun] = state.complete_due(102.6)
    state.finish_job(rerun.id, "done", 102.7, results=[result("1.2.1.200"), result("1.2.1.201", "sc")],
                     destinations=["pacs"])  # fmt: skip
    finished_job(state, "1.2.2", 102.8, [result("1.2.2.100")])  # another study's: not yet due
    due = outbox.due(102.7)
    assert [i.sop_instance_uid for i in due] == ["1.2.1.100", "1.2.1.200", "1.2.1.201"]
    assert [i.job_id for i in due] == [first.id, rerun.id, rerun.id]
    # A limit never takes the later report without the earlier one.
    assert [i.sop_instance_uid for i in outbox.due(102.7, limit=1)] == ["1.2.1.100"]


def test_a_lane_sees_only_its_destination_or_the_unconfigured_ones(state: State) -> None:
    outbox = Outbox(state, CFG)
    finished_job(state, "1.2.1", 100.0, [result("1.2.1.100")], ("pacs", "archive", "gone"))
    finished_job(state, "1.2.2", 200.0, [result("1.2.2.100")], ("pacs",))
    pacs, archive = DestinationLane("pacs"), DestinationLane("archive")
    unconfigured = DestinationLane(None, ("pacs", "archive"))

    def due(lane: DestinationLane) -> list[tuple[str, str]]:
        return [(i.destination, i.sop_instance_uid) for i in outbox.due(300.0, lane=lane)]

    assert due(pacs) == [("pacs", "1.2.1.100"), ("pacs", "1.2.2.100")]
    assert due(archive) == [("archive", "1.2.1.100")]
    assert due(unconfigured) == [("gone", "1.2.1.100")]
    assert len(outbox.due(300.0)) == len(outbox.due(300.0, lane=DestinationLane(None))) == 4
    assert due(DestinationLane("backup")) == []
    [archived] = outbox.due(300.0, lane=archive)
    outbox.mark_failed(archived.id, 150.0, "refused")  # next attempt at 151-152
    assert outbox.next_due(archive) is not None and 151.0 <= outbox.next_due(archive) <= 152.0
    assert (outbox.next_due(pacs), outbox.next_due(unconfigured)) == (100.0, 100.0)
    assert outbox.next_due(DestinationLane("backup")) is None


def test_rows_scheduled_past_any_backoff_are_due_after_the_clock_stepped_back(
    state: State, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(state, CFG)  # max_backoff_seconds=5: nothing waits more than 5 s
    finished_job(state, "1.9", 10_000.0, [result("1.9.100")])
    [item] = outbox.due(10_000.0)
    failed = outbox.mark_failed(item.id, 10_000.0, "refused")
    assert outbox.due(10_000.0) == []
    # Within the longest backoff and a minute: an ordinary wait, or a small correction.
    assert outbox.due(10_000.0 - 60.0) == []
    # NTP stepped the clock back an hour: was a wait of an hour, nothing logged.
    back = 10_000.0 - 3600.0
    assert [i.id for i in outbox.due(back)] == [item.id]
    # Or the longest backoff was lowered since (the clock did not move): both are named.
    assert "the clock stepped back, or sending.max_backoff_seconds was lowered" in caplog.text
    assert outbox.next_due() == back
    assert failed.attempts == outbox.items()[0].attempts  # nothing counted


def test_next_due_is_none_without_pending_rows(state: State) -> None:
    outbox = Outbox(state, CFG)
    assert outbox.next_due() is None
    finished_job(state, "1.3", 10.0, [result("1.3.100")])
    [item] = outbox.due(10.0)
    outbox.mark_sent(item.id, 11.0)
    assert outbox.next_due() is None


def test_mark_sent_counts_the_attempt_and_leaves_the_queue(state: State) -> None:
    outbox = Outbox(state, CFG)
    finished_job(state, "1.4", 10.0, [result("1.4.100")], destinations=["a", "b"])
    a, b = outbox.due(10.0)
    outbox.mark_failed(a.id, 11.0, "peer down")
    outbox.mark_sent(a.id, 20.0)
    [sent] = outbox.items(["sent"])
    assert (sent.id, sent.state, sent.sent_at, sent.attempts, sent.last_error) == (
        a.id,
        "sent",
        20.0,
        2,
        None,
    )
    assert [i.id for i in outbox.due(1e9)] == [b.id]


def test_backoff_seconds_is_exponential_capped_with_equal_jitter() -> None:
    cfg = SendingConfig(backoff_seconds=2.0, max_backoff_seconds=30.0)
    for attempts, base in [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (9, 30.0)]:
        expected_rng = random.Random(attempts)
        expected = base * (0.5 + 0.5 * expected_rng.random())
        assert backoff_seconds(attempts, cfg, random.Random(attempts)) == pytest.approx(expected)
        rng = random.Random(1234)
        waits = [backoff_seconds(attempts, cfg, rng) for _ in range(200)]
        assert all(base / 2 <= w <= base for w in waits)
        assert max(waits) - min(waits) > base / 4  # jittered, not constant


def test_backoff_seconds_is_reproducible_with_a_seeded_rng() -> None:
    cfg = SendingConfig(backoff_seconds=0.5, max_backoff_seconds=60.0)
    first = [backoff_seconds(n, cfg, random.Random(42)) for n in range(1, 8)]
    second = [backoff_seconds(n, cfg, random.Random(42)) for n in range(1, 8)]
    assert first == second
    assert all(isinstance(w, float) for w in first)


def test_backoff_seconds_zero_base_means_retry_at_once() -> None:
    cfg = SendingConfig(backoff_seconds=0.0, max_backoff_seconds=0.0)
    assert backoff_seconds(3, cfg, random.Random(0)) == 0.0


def test_mark_failed_schedules_the_next_attempt_with_backoff(state: State) -> None:
    cfg = SendingConfig(max_attempts=6, backoff_seconds=2.0, max_backoff_seconds=5.0)
    outbox = Outbox(state, cfg)
    finished_job(state, "1.5", 10.0, [result("1.5.100")])
    [item] = outbox.due(10.0)
    now = 100.0
    for attempts, base in [(1, 2.0), (2, 4.0), (3, 5.0), (4, 5.0), (5, 5.0)]:
        after = outbox.mark_failed(item.id, now, f"failure {attempts}")
        assert (after.id, after.state, after.attempts) == (item.id, "pending", attempts)
        assert after.last_error == f"failure {attempts}"
        wait = after.next_attempt_at - now
        assert base / 2 <= wait <= base, (attempts, wait)
        assert outbox.due(now) == []  # not due before its backoff
        assert [i.id for i in outbox.due(after.next_attempt_at)] == [item.id]
        now = after.next_attempt_at


def test_max_attempts_makes_a_dead_letter_that_keeps_its_error(state: State) -> None:
    outbox = Outbox(state, CFG)  # max_attempts=4
    finished_job(state, "1.6", 10.0, [result("1.6.100")])
    [item] = outbox.due(10.0)
    for n in range(1, 4):
        assert outbox.mark_failed(item.id, 10.0 * n, "refused").state == "pending"
    long_error = "association to pacs rejected: " + "x" * 2000
    dead = outbox.mark_failed(item.id, 50.0, long_error)
    assert (dead.state, dead.attempts, dead.next_attempt_at) == ("dead", 4, 50.0)
    assert dead.last_error == long_error[:1000]
    assert len(dead.last_error) == 1000
    assert outbox.due(1e12) == []
    assert outbox.next_due() is None
    assert [i.id for i in outbox.items(["dead"])] == [item.id]


def test_max_attempts_one_makes_the_first_failure_dead(state: State) -> None:
    outbox = Outbox(state, SendingConfig(max_attempts=1))
    finished_job(state, "1.7", 10.0, [result("1.7.100")])
    [item] = outbox.due(10.0)
    after = outbox.mark_failed(item.id, 11.0, "refused")
    assert (after.state, after.attempts, after.next_attempt_at) == ("dead", 1, 11.0)


def test_mark_failed_on_an_unknown_id_raises(state: State) -> None:
    outbox = Outbox(state, CFG)
    with pytest.raises(StateError, match=r"^outbox: no item 99$"):
        outbox.mark_failed(99, 1.0, "x")


def test_wait_with_earlier_takes_the_latest_attempt_of_an_earlier_pending_row(
    state: State,
) -> None:
    outbox = Outbox(state, CFG)
    finished_job(state, "1.9", 10.0, [result("1.9.100"), result("1.9.101", "sc")])
    finished_job(state, "1.10", 10.0, [result("1.10.100")])
    first, second, other = (i.id for i in outbox.due(10.0))
    failed = outbox.mark_failed(first, 11.0, "no C-STORE response")
    assert outbox.wait_with_earlier(second) == failed.next_attempt_at > 11.0
    # Another study's row, and a row with nothing earlier pending, keep their time.
    assert outbox.wait_with_earlier(other) == 10.0
    assert outbox.wait_with_earlier(first) == failed.next_attempt_at
    outbox.mark_sent(first, 12.0)
    finished_job(state, "1.11", 10.0, [result("1.11.100"), result("1.11.101", "sc")])
    sent_first, later = (i.id for i in outbox.due(10.0) if i.study_uid == "1.11")
    outbox.mark_sent(sent_first, 12.0)
    assert outbox.wait_with_earlier(later) == 10.0  # an earlier row sent holds nothing back


def test_wait_with_earlier_on_an_unknown_id_raises(state: State) -> None:
    with pytest.raises(StateError, match=r"^outbox: no item 99$"):
        Outbox(state, CFG).wait_with_earlier(99)


def make_mixed(state: State, outbox: Outbox) -> tuple[int, int, int, int]:
    """Four rows: pending, sent, dead, dead (ids in that order)."""
    finished_job(
        state, "1.8", 10.0, [result(f"1.8.{n}") for n in range(100, 104)], destinations=["pacs"]
    )
    pending, sent, dead1, dead2 = (i.id for i in outbox.due(10.0))
    outbox.mark_sent(sent, 11.0)
    for item_id in (dead1, dead2):
        for n in range(CFG.max_attempts):
            outbox.mark_failed(item_id, 12.0 + n, f"boom {item_id}")
    return pending, sent, dead1, dead2


def test_items_filters_by_state(state: State) -> None:
    outbox = Outbox(state, CFG)
    pending, sent, dead1, dead2 = make_mixed(state, outbox)
    assert [i.id for i in outbox.items()] == [pending, sent, dead1, dead2]
    assert [i.id for i in outbox.items(STATES)] == [pending, sent, dead1, dead2]
    assert [i.id for i in outbox.items(["pending"])] == [pending]
    assert [i.id for i in outbox.items(["sent"])] == [sent]
    assert [i.id for i in outbox.items(["dead", "pending"])] == [pending, dead1, dead2]
    assert {i.state for i in outbox.items(["dead"])} == {"dead"}


@pytest.mark.parametrize("states", [["bogus"], ["pending", "Dead"], ["failed"]])
def test_items_rejects_an_unknown_state(state: State, states: list[str]) -> None:
    outbox = Outbox(state, CFG)
    bad = next(s for s in states if s not in STATES)
    with pytest.raises(
        StateError, match=rf"^outbox state: expected pending, sent, dead, got '{bad}'$"
    ):
        outbox.items(states)


def test_depth_counts_per_state(state: State) -> None:
    outbox = Outbox(state, CFG)
    assert outbox.depth() == {"pending": 0, "sent": 0, "dead": 0}
    make_mixed(state, outbox)
    assert outbox.depth() == {"pending": 1, "sent": 1, "dead": 2}


def test_retry_requeues_every_dead_letter(state: State) -> None:
    outbox = Outbox(state, CFG)
    pending, _, dead1, dead2 = make_mixed(state, outbox)
    assert outbox.retry(500.0) == 2
    assert outbox.depth() == {"pending": 3, "sent": 1, "dead": 0}
    requeued = {i.id: i for i in outbox.items(["pending"])}
    for item_id in (dead1, dead2):
        item = requeued[item_id]
        assert (item.state, item.attempts, item.next_attempt_at) == ("pending", 0, 500.0)
    assert {i.id for i in outbox.due(500.0)} == {pending, dead1, dead2}
    assert outbox.retry(600.0) == 0  # nothing dead any more
    # A requeued row gets its full allowance of attempts again.
    for n in range(CFG.max_attempts - 1):
        assert outbox.mark_failed(dead1, 700.0 + n, "again").state == "pending"
    assert outbox.mark_failed(dead1, 800.0, "again").state == "dead"


def test_retry_requeues_only_the_named_dead_letters(state: State) -> None:
    outbox = Outbox(state, CFG)
    _, _, dead1, dead2 = make_mixed(state, outbox)
    assert outbox.retry(500.0, [dead2]) == 1
    assert [i.id for i in outbox.items(["dead"])] == [dead1]
    [item] = [i for i in outbox.items(["pending"]) if i.id == dead2]
    assert (item.attempts, item.next_attempt_at) == (0, 500.0)


def test_retry_of_ids_that_are_not_dead_letters_raises_and_changes_nothing(
    state: State,
) -> None:
    outbox = Outbox(state, CFG)
    pending, sent, dead1, _ = make_mixed(state, outbox)
    before = outbox.items()
    with pytest.raises(StateError, match=rf"^outbox retry: no dead letter with id {pending}$"):
        outbox.retry(500.0, [dead1, pending])
    with pytest.raises(StateError, match=rf"^outbox retry: no dead letter with id {sent}, 999$"):
        outbox.retry(500.0, [999, sent])
    assert outbox.items() == before


def test_rows_survive_a_restart(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db", RULES)
    try:
        finished_job(state, "1.9", 10.0, [result("1.9.100")])
        [item] = Outbox(state, CFG).due(10.0)
        Outbox(state, CFG).mark_failed(item.id, 10.0, "down")
    finally:
        state.close()
    state = State(tmp_path / "state.db", RULES)
    try:
        [again] = Outbox(state, CFG).items(["pending"])
        assert (again.id, again.attempts, again.last_error) == (item.id, 1, "down")
    finally:
        state.close()


def test_the_default_retries_outlast_a_pacs_restart() -> None:
    # A PACS restart or a short maintenance window must not turn results into dead letters:
    # even with the shortest jitter, the default attempts span at least 40 minutes.
    class Jitter(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    cfg = SendingConfig()
    # The waits between the max_attempts attempts, at the shortest and longest jitter.
    shortest = sum(backoff_seconds(n, cfg, Jitter(0.0)) for n in range(1, cfg.max_attempts))
    longest = sum(backoff_seconds(n, cfg, Jitter(1.0)) for n in range(1, cfg.max_attempts))
    assert shortest >= 40 * 60
    assert longest <= 90 * 60  # and an unreachable destination is a dead letter within hours
