"""The guard: bulkhead, breaker and time limit composed around one dependency."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from stalwart.errors import BulkheadFull, CallNotPermitted, CallTimeout, ModelError
from stalwart.pipeline import Exchange
from stalwart.resilience import (
    BreakerConfig,
    BreakerState,
    BulkheadConfig,
    Guard,
    GuardConfig,
    GuardStage,
    TimeoutConfig,
)

SLACK = 0.15


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


def config(**parts: object) -> GuardConfig:
    base: dict[str, object] = {
        "breaker": {"sliding_window_size": 2, "minimum_number_of_calls": 2},
        "bulkhead": {"max_concurrent_calls": 2},
        "timeout": {"timeout_duration": "50ms"},
    }
    base.update(parts)
    return GuardConfig.model_validate(base)


async def echo(x: int) -> int:
    return x


async def sleepy(seconds: float) -> None:
    await asyncio.sleep(seconds)


def test_guard_config_defaults_build_all_three_parts() -> None:
    """By default a guard has a breaker, a bulkhead and a one-second timeout."""
    guard = Guard("model-a")
    assert guard.breaker is not None
    assert guard.bulkhead is not None
    assert guard.time_limiter is not None
    assert guard.time_limiter.timeout == 1.0


async def test_a_successful_call_is_recorded_and_frees_its_slot() -> None:
    """A call through the guard returns its result, counts as a success, frees its slot."""
    guard = Guard("model-a", config())
    assert await guard.call(echo, 5) == 5
    snap = guard.snapshot()
    assert snap.breaker is not None
    assert snap.breaker.successful_calls == 1
    assert snap.bulkhead is not None
    assert snap.bulkhead.in_flight == 0


async def test_a_timeout_returns_on_time_and_counts_as_a_slow_failure() -> None:
    """A call past the guard's timeout fails on time and is a slow failure for the breaker."""
    guard = Guard("model-a", config())
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        await guard.call(sleepy, 10)
    assert time.monotonic() - start < 0.05 + SLACK
    snap = guard.snapshot().breaker
    assert snap is not None
    assert (snap.failed_calls, snap.slow_calls) == (1, 1)
    with pytest.raises(CallTimeout):
        await guard.call(sleepy, 10)
    assert guard.breaker is not None
    assert guard.breaker.state is BreakerState.OPEN


async def test_a_tight_client_deadline_does_not_count_against_the_dependency() -> None:
    """When the request's own deadline ends a call sooner than the slow-call threshold,
    the breaker records nothing; the caller still gets a timeout on time."""
    guard = Guard("model-a", config(timeout={"timeout_duration": 5}))
    with pytest.raises(CallTimeout) as timed_out:
        await guard.call(sleepy, 10, deadline=time.monotonic() + 0.02)
    assert timed_out.value.by_deadline
    snap = guard.snapshot().breaker
    assert snap is not None
    assert (snap.buffered_calls, snap.ignored_calls) == (0, 1)


async def test_a_deadline_that_outlasts_the_slow_threshold_still_counts() -> None:
    """A call cut by the deadline after running longer than the slow-call threshold is a
    slow failure: it was slow by the dependency's own standard."""
    guard = Guard(
        "model-a",
        config(breaker={"slow_call_duration_threshold": "10ms"}, timeout={"timeout_duration": 5}),
    )
    with pytest.raises(CallTimeout):
        await guard.call(sleepy, 10, deadline=time.monotonic() + 0.05)
    snap = guard.snapshot().breaker
    assert snap is not None
    assert (snap.failed_calls, snap.slow_calls) == (1, 1)


async def test_a_passed_deadline_fails_without_calling() -> None:
    """A request already late is refused before anything is called or recorded."""
    guard = Guard("model-a", config())
    called = False

    async def model() -> None:
        nonlocal called
        called = True

    with pytest.raises(CallTimeout):
        await guard.call(model, deadline=time.monotonic() - 0.001)
    assert not called
    snap = guard.snapshot()
    assert snap.breaker is not None
    assert snap.breaker.ignored_calls == 0
    assert snap.bulkhead is not None
    assert snap.bulkhead.in_flight == 0


async def test_a_full_bulkhead_refuses_without_touching_the_breaker() -> None:
    """Overload is not a failure of the dependency: BulkheadFull leaves the breaker alone."""
    guard = Guard("model-a", config(timeout=None))
    running = [asyncio.create_task(guard.call(sleepy, 0.1)) for _ in range(2)]
    await asyncio.sleep(0.01)
    for _ in range(5):
        with pytest.raises(BulkheadFull):
            await guard.call(echo, 1)
    await asyncio.gather(*running)
    snap = guard.snapshot()
    assert snap.breaker is not None
    assert (snap.breaker.successful_calls, snap.breaker.failed_calls) == (2, 0)
    assert snap.bulkhead is not None
    assert snap.bulkhead.rejected_calls == 5


async def test_an_open_breaker_refuses_and_frees_the_bulkhead_slot() -> None:
    """CallNotPermitted comes with the bulkhead slot given back at once."""
    guard = Guard("model-a", config())

    async def broken() -> None:
        raise ModelError("down")

    for _ in range(2):
        with pytest.raises(ModelError):
            await guard.call(broken)
    with pytest.raises(CallNotPermitted) as refused:
        await guard.call(echo, 1)
    assert refused.value.retry_after == pytest.approx(10.0, abs=0.5)
    snap = guard.snapshot().bulkhead
    assert snap is not None
    assert snap.in_flight == 0


async def test_a_timed_out_thread_keeps_its_slot_until_it_really_ends(
    executor: ThreadPoolExecutor,
) -> None:
    """With cancel_running_future off, a model thread that runs past its timeout still holds
    its bulkhead slot, so the bulkhead counts what the model is really busy with."""
    guard = Guard(
        "model-a",
        config(
            bulkhead={"max_concurrent_calls": 1},
            timeout={"timeout_duration": "30ms", "cancel_running_future": False},
        ),
    )
    release = threading.Event()
    loop = asyncio.get_running_loop()

    async def model() -> str:
        return await loop.run_in_executor(executor, release.wait, 5)  # type: ignore[arg-type]

    with pytest.raises(CallTimeout):
        await guard.call(model)
    with pytest.raises(BulkheadFull):
        await guard.call(echo, 1)  # the stuck thread still has the only slot
    release.set()
    for _ in range(100):
        if guard.snapshot().bulkhead.in_flight == 0:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    assert await guard.call(echo, 2) == 2


async def test_parts_switched_off_are_absent() -> None:
    """With every part set to None the guard simply awaits the call."""
    guard = Guard("model-a", GuardConfig(breaker=None, bulkhead=None, timeout=None))
    assert (guard.breaker, guard.bulkhead, guard.time_limiter) == (None, None, None)
    assert await guard.call(echo, 3) == 3
    with pytest.raises(ModelError):
        await guard.call(_raise_model_error)
    assert guard.snapshot().as_dict() == {"name": "model-a", "breaker": None, "bulkhead": None, "timeout": None}


async def _raise_model_error() -> None:
    raise ModelError("x")


async def test_a_cancelled_caller_is_ignored_by_the_breaker_and_frees_its_slot() -> None:
    """A client that disconnects cancels its call; the breaker does not count it and the
    slot comes back."""
    guard = Guard("model-a", config(timeout={"timeout_duration": 5}))
    task = asyncio.create_task(guard.call(sleepy, 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    snap = guard.snapshot()
    assert snap.breaker is not None
    assert snap.breaker.ignored_calls == 1
    assert snap.bulkhead is not None
    assert snap.bulkhead.in_flight == 0


async def test_guard_snapshot_is_json_ready() -> None:
    """The guard's snapshot serialises for a health endpoint."""
    guard = Guard("model-a", config())
    await guard.call(echo, 1)
    data = json.loads(json.dumps(guard.snapshot().as_dict()))
    assert data["breaker"]["state"] == "closed"
    assert data["bulkhead"]["max_concurrent_calls"] == 2
    assert data["timeout"] == pytest.approx(0.05)


# -- as a pipeline stage --------------------------------------------------------------


def exchange(deadline: float | None = None) -> Exchange:
    return Exchange(
        request_id="r1",
        inputs={"x": np.zeros((2, 3))},
        rows=2,
        outputs=("y",),
        deadline=deadline,
    )


@pytest.mark.parametrize("timeout", [{"timeout_duration": 1}, None])
async def test_guard_stage_passes_the_next_stages_results_back(timeout: object) -> None:
    """The stage runs the rest of the pipeline under the guard and keeps what it wrote,
    with or without a time limit."""

    async def model_stage(ex: Exchange) -> None:
        ex.results = {"y": np.ones(ex.rows)}
        ex.timings.model_ms = 1.0
        ex.batch_rows = 7
        ex.version = 3

    ex = exchange()
    timings_seen_upstream = ex.timings
    await GuardStage(Guard("model-a", config(timeout=timeout)), model_stage)(ex)
    assert ex.results is not None
    assert list(ex.results["y"]) == [1.0, 1.0]
    assert ex.version == 3
    assert ex.batch_rows == 7
    assert timings_seen_upstream is ex.timings
    assert ex.timings.model_ms == 1.0


async def test_guard_stage_never_lets_a_late_result_land(executor: ThreadPoolExecutor) -> None:
    """A model stage that finishes after its timeout cannot write its result onto the
    exchange the rest of the pipeline has moved on with."""
    release = threading.Event()
    loop = asyncio.get_running_loop()
    wrote = threading.Event()

    async def stubborn_model(ex: Exchange) -> None:
        await loop.run_in_executor(executor, release.wait, 5)
        ex.results = {"y": np.full(ex.rows, 99.0)}
        ex.batch_rows = 99
        wrote.set()

    guard = Guard("model-a", config(timeout={"timeout_duration": "30ms", "cancel_running_future": False}))
    ex = exchange(deadline=time.monotonic() + 5)
    with pytest.raises(CallTimeout):
        await GuardStage(guard, stubborn_model)(ex)
    ex.results = {"y": np.zeros(ex.rows)}  # what a fallback would answer
    release.set()
    for _ in range(100):
        if wrote.is_set():
            break
        await asyncio.sleep(0.01)
    assert wrote.is_set()
    assert list(ex.results["y"]) == [0.0, 0.0]
    assert ex.batch_rows is None


async def test_guard_stage_uses_the_exchange_deadline() -> None:
    """The stage hands the exchange's deadline to the guard."""

    async def slow_stage(ex: Exchange) -> None:
        await asyncio.sleep(10)

    guard = Guard("model-a", config(timeout={"timeout_duration": 5}))
    start = time.monotonic()
    with pytest.raises(CallTimeout) as timed_out:
        await GuardStage(guard, slow_stage)(exchange(deadline=start + 0.03))
    assert timed_out.value.by_deadline
    assert time.monotonic() - start < 0.03 + SLACK


def test_guard_config_reads_a_deployment_file_shape() -> None:
    """A deployment's guard settings load from plain data, parts switched off with null."""
    cfg = GuardConfig.model_validate(
        {
            "breaker": {"failure_rate_threshold": 25, "wait_duration_in_open_state": "30s"},
            "bulkhead": None,
            "timeout": {"timeout_duration": "200ms"},
        }
    )
    assert cfg.breaker == BreakerConfig(failure_rate_threshold=25, wait_duration_in_open_state=30)
    assert cfg.bulkhead is None
    assert cfg.timeout == TimeoutConfig(timeout_duration=0.2)
    assert GuardConfig().bulkhead == BulkheadConfig()


async def test_guard_stage_runs_the_model_stages_in_the_requests_own_task() -> None:
    """With a time limit, the stages after the guard still run in the request's task,
    starting at once (a batcher sees the request without a loop turn's delay), and a
    limit that strikes cancels them there: nothing late can land."""
    caller = asyncio.current_task()
    seen: list[object] = []

    async def model_stage(ex: Exchange) -> None:
        seen.append(asyncio.current_task())
        await asyncio.sleep(10)

    stage = GuardStage(Guard("model-a", config(timeout={"timeout_duration": "30ms"})), model_stage)
    ex = exchange()
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        await stage(ex)
    assert time.monotonic() - start < 1.0
    assert seen == [caller]
    assert ex.results is None
