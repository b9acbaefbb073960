"""Load shedding: refuse at once when over capacity, cheaper traffic first."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import ValidationError

from stalwart.errors import Overloaded, RequestError
from stalwart.resilience import LoadShedder, Priority, ShedderConfig, parse_priority
from tests.resilience.clock import FakeClock

LOW, NORMAL, HIGH = Priority.LOW, Priority.NORMAL, Priority.HIGH


def shedder(clock: FakeClock, **settings: Any) -> LoadShedder:
    return LoadShedder("churn", ShedderConfig(**settings), clock=clock)


def admitted(s: LoadShedder, priority: Priority) -> bool:
    try:
        s.admit(priority)
    except Overloaded:
        return False
    return True


def test_in_flight_limit_sheds_low_priority_first(clock: FakeClock) -> None:
    """With 10 slots, low priority may fill 5, normal 9, high all 10."""
    s = shedder(clock, max_in_flight=10, max_queue_wait=None)
    assert sum(admitted(s, LOW) for _ in range(8)) == 5
    assert sum(admitted(s, NORMAL) for _ in range(8)) == 4
    assert sum(admitted(s, HIGH) for _ in range(8)) == 1
    assert s.in_flight == 10
    snap = s.snapshot()
    assert snap.shed == {"low": 3, "normal": 4, "high": 7}
    assert snap.admitted == 10


def test_an_idle_deployment_admits_even_the_lowest_priority(clock: FakeClock) -> None:
    """Shares round up: with a single slot, a low-priority request still gets it when idle."""
    s = shedder(clock, max_in_flight=1, max_queue_wait=None)
    admission = s.admit(LOW)
    assert not admitted(s, HIGH)
    admission.done()
    assert admitted(s, LOW)


def test_finished_requests_free_their_place(clock: FakeClock) -> None:
    """done() (or leaving the with-block) frees the slot, once even if called twice."""
    s = shedder(clock, max_in_flight=2, max_queue_wait=None, priority_shares={"normal": 1.0})
    with s.admit():
        with s.admit() as second:
            assert not admitted(s, NORMAL)
            second.done()
            second.done()
        assert s.in_flight == 1
    assert s.in_flight == 0


def test_refusal_carries_a_retry_after_from_the_completion_rate(clock: FakeClock) -> None:
    """Retry-After estimates when a slot frees from the recent completion rate, bounded."""
    s = shedder(
        clock,
        max_in_flight=4,
        max_queue_wait=None,
        priority_shares={"normal": 1.0},
        throughput_window=2,
        min_retry_after=0,
    )
    for _ in range(10):  # 10 completions in the window: 5 per second
        s.admit().done()
        clock.advance(0.1)
    for _ in range(4):
        s.admit()
    with pytest.raises(Overloaded) as refused:
        s.admit()
    assert refused.value.retry_after == pytest.approx(0.2)  # one slot at 5/s
    assert "4 requests in flight" in refused.value.message
    bounded = shedder(clock, max_in_flight=1, max_queue_wait=None, priority_shares={"normal": 1.0})
    bounded.admit()
    with pytest.raises(Overloaded) as refused:
        bounded.admit()
    assert refused.value.retry_after == 1.0  # nothing completed yet: the minimum


def test_a_standing_queue_sheds_by_priority(clock: FakeClock) -> None:
    """When the request at the head of the queue has waited longer than a priority's share
    of the budget, that priority is shed; higher priorities still get in."""
    s = shedder(clock, max_in_flight=None, max_queue_wait=0.5)
    waiting = [s.admit(HIGH) for _ in range(2)]
    clock.advance(0.3)  # the head has waited 0.3 s: low's budget is 0.25 s, normal's 0.45 s
    assert s.snapshot().queue_wait == pytest.approx(0.3)
    assert not admitted(s, LOW)
    assert admitted(s, NORMAL)  # joins the back of the queue
    for admission in waiting:
        admission.start()
    assert s.snapshot().queue_wait == 0.0  # the new head has only just arrived
    assert admitted(s, LOW)


def test_the_queue_drains_the_moment_its_head_is_served(clock: FakeClock) -> None:
    """No lag: the signal falls as soon as the long-waiting requests start."""
    s = shedder(clock, max_in_flight=None, max_queue_wait=0.1)
    slow = s.admit()
    clock.advance(0.5)
    assert not admitted(s, HIGH)
    slow.start()
    assert admitted(s, LOW)


def test_a_burst_after_a_quiet_spell_is_admitted(clock: FakeClock) -> None:
    """A burst arriving at once has a young head: it is admitted (the in-flight limit is
    what bounds its size)."""
    s = shedder(clock, max_in_flight=None, max_queue_wait=0.1)
    clock.advance(60)
    assert all(admitted(s, LOW) for _ in range(500))


def test_work_before_queueing_is_not_a_queue_wait(clock: FakeClock) -> None:
    """A request that spends its first 0.5 s fetching features (a hanging source, cut by
    its time limit) is not in the queue meanwhile: nothing is shed for it."""
    s = shedder(clock, max_in_flight=None, max_queue_wait=0.1)
    fetching = [s.admit(queued=False) for _ in range(10)]
    clock.advance(0.5)  # features
    assert s.snapshot().queue_wait == 0.0
    assert admitted(s, LOW)
    for admission in fetching:
        admission.queued()  # now they wait for the model, from this instant
    assert admitted(s, HIGH)
    clock.advance(0.2)
    assert s.snapshot().queue_wait == pytest.approx(0.2)
    assert not admitted(s, HIGH)


def test_done_leaves_the_queue_even_without_start(clock: FakeClock) -> None:
    """A request answered before its service began (a client error) does not hold the
    queue's head."""
    s = shedder(clock, max_in_flight=None, max_queue_wait=0.1)
    with s.admit():
        clock.advance(1.0)
    assert s.snapshot().queue_wait == 0.0
    assert admitted(s, LOW)


def test_start_without_queue_wait_configured_is_harmless(clock: FakeClock) -> None:
    """start() is optional and idempotent; with no budget it changes nothing."""
    s = shedder(clock, max_in_flight=3, max_queue_wait=None)
    admission = s.admit()
    admission.start()
    admission.start()
    admission.done()
    admission.start()
    assert s.in_flight == 0


def test_no_limits_admit_everything(clock: FakeClock) -> None:
    """Both signals off: every request is admitted."""
    s = shedder(clock, max_in_flight=None, max_queue_wait=None)
    for _ in range(1000):
        s.admit(LOW)
    assert s.in_flight == 1000


def test_threads_never_push_in_flight_past_the_limit() -> None:
    """Admissions from many threads never exceed the limit, and all places come back."""
    s = LoadShedder("churn", ShedderConfig(max_in_flight=5, max_queue_wait=None, priority_shares={"normal": 1.0}))
    peak = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal peak
        for _ in range(2000):
            try:
                admission = s.admit()
            except Overloaded:
                continue
            with lock:
                peak = max(peak, s.in_flight)
            admission.done()

    pool = [threading.Thread(target=worker) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    assert peak <= 5
    assert s.in_flight == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("low", LOW), ("Normal", NORMAL), (" HIGH ", HIGH), ("2", HIGH), (0, LOW), (None, NORMAL), ("", NORMAL)],
)
def test_priorities_parse_from_names_and_numbers(value: str | int | None, expected: Priority) -> None:
    """Priorities come as names or numbers; absent means normal."""
    assert parse_priority(value) is expected


@pytest.mark.parametrize("value", ["urgent", "7", -1, "1.5"])
def test_unknown_priorities_are_a_client_error(value: str | int) -> None:
    """An unknown priority is the client's mistake: a RequestError naming the field."""
    with pytest.raises(RequestError) as bad:
        parse_priority(value)
    assert bad.value.field == "priority"


@pytest.mark.parametrize(
    "settings",
    [
        {"priority_shares": {"low": 0}},
        {"priority_shares": {"low": 1.5}},
        {"priority_shares": {"low": 1.0, "normal": 0.5}},
        {"priority_shares": {"urgent": 0.5}},
        {"max_in_flight": 0},
        {"min_retry_after": 10, "max_retry_after": 5},
    ],
)
def test_invalid_shedder_settings_are_refused(settings: dict[str, Any]) -> None:
    """Shares must be in (0, 1] and grow with priority; limits must make sense."""
    with pytest.raises(ValidationError):
        ShedderConfig.model_validate(settings)


def test_snapshot_is_json_ready(clock: FakeClock) -> None:
    """The snapshot's dict form is plain data."""
    s = shedder(clock, max_in_flight=2)
    s.admit()
    data = s.snapshot().as_dict()
    assert data["in_flight"] == 1
    assert data["max_in_flight"] == 2
    assert data["shed"] == {"low": 0, "normal": 0, "high": 0}
