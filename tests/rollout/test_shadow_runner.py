"""Shadow calls never reach the primary: submits stay O(1) and the event loop stays
responsive whether the shadow answers, raises, is slow or hangs; what is dropped is counted."""

from __future__ import annotations

import asyncio
import gc
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from stalwart.errors import ConfigError
from stalwart.rollout.shadow_runner import ShadowMetrics, ShadowRunner

Outcome = tuple[int, object, float]


def _runner(
    call: Callable[[int], Awaitable[object]],
    registry: CollectorRegistry,
    results: list[Outcome],
    **kwargs: object,
) -> ShadowRunner[int, object]:
    def on_result(item: int, outcome: object, latency: float) -> None:
        results.append((item, outcome, latency))

    return ShadowRunner("s1", call, on_result, metrics=ShadowMetrics(registry), **kwargs)  # type: ignore[arg-type]


def _dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("stalwart_shadow_dropped_total", {"shadow": "s1", "reason": reason}) or 0.0


async def _until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class _Ticker:
    """Measures the event loop's lateness: a task asking to wake every millisecond."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.001)
            self.lags.append(time.monotonic() - before - 0.001)

    def __enter__(self) -> _Ticker:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def worst(self) -> float:
        return max(self.lags)


async def test_answers_reach_on_result_with_latency() -> None:
    """Each answer arrives with its item and the call's latency; answered calls are counted."""
    registry, results = CollectorRegistry(), list[Outcome]()

    async def call(item: int) -> int:
        await asyncio.sleep(0.01)
        return item * 2

    runner = _runner(call, registry, results, workers=2)
    runner.start()
    assert all(runner.submit(i) for i in range(6))
    await _until(lambda: len(results) == 6)
    assert sorted((item, outcome) for item, outcome, _ in results) == [(i, i * 2) for i in range(6)]
    assert all(0.009 <= latency < 1.0 for _, _, latency in results)
    assert registry.get_sample_value("stalwart_shadow_answered_total", {"shadow": "s1"}) == 6
    assert await runner.close(1.0) == 0


async def test_a_raising_shadow_is_an_outcome_and_counted() -> None:
    """The exception a shadow raises (even before awaiting) goes to on_result, counted as error."""
    registry, results = CollectorRegistry(), list[Outcome]()

    def call(item: int) -> Awaitable[object]:
        raise ValueError(f"bad {item}")

    runner = _runner(call, registry, results)
    runner.start()
    for i in range(5):
        runner.submit(i)
    await _until(lambda: len(results) == 5)
    assert all(isinstance(outcome, ValueError) for _, outcome, _ in results)
    assert _dropped(registry, "error") == 5
    await runner.close(1.0)


async def test_a_hanging_shadow_times_out_and_frees_its_worker() -> None:
    """A call that never answers is abandoned at its time limit; the worker goes on."""
    registry, results = CollectorRegistry(), list[Outcome]()
    never = asyncio.Event()

    async def call(item: int) -> int:
        if item == 0:
            await never.wait()
        return item

    runner = _runner(call, registry, results, workers=1, time_limit=0.05)
    runner.start()
    runner.submit(0)
    runner.submit(1)
    await _until(lambda: len(results) == 2)
    (first, timed_out, waited), (second, answer, _) = results
    assert (first, second, answer) == (0, 1, 1)
    assert isinstance(timed_out, TimeoutError)
    assert 0.05 <= waited < 0.5
    assert _dropped(registry, "timeout") == 1
    await _until(lambda: runner.abandoned == 0)  # it honoured cancellation
    await runner.close(1.0)


async def test_a_call_ignoring_cancellation_does_not_pin_the_worker() -> None:
    """A shadow that swallows cancellation is left behind; past max_abandoned, submits are
    dropped as stuck instead of piling up; once it stops, it is forgotten."""
    registry, results = CollectorRegistry(), list[Outcome]()
    release = asyncio.Event()

    async def stubborn(item: int) -> int:
        while not release.is_set():
            try:
                await asyncio.sleep(0.005)
            except asyncio.CancelledError:
                continue
        return item

    runner = _runner(stubborn, registry, results, workers=1, time_limit=0.02, max_abandoned=2)
    runner.start()
    for i in range(3):
        assert runner.submit(i)
    await _until(lambda: len(results) == 3)
    assert all(isinstance(outcome, TimeoutError) for _, outcome, _ in results)
    assert runner.abandoned == 3
    assert not runner.submit(99)
    assert _dropped(registry, "stuck") == 1
    assert registry.get_sample_value("stalwart_shadow_abandoned", {"shadow": "s1"}) == 3
    release.set()
    await _until(lambda: runner.abandoned == 0)
    assert runner.submit(4)
    await _until(lambda: len(results) == 4)
    assert results[-1][1] == 4
    await runner.close(1.0)


async def test_a_model_hanging_on_its_thread_pins_only_that_thread() -> None:
    """A shadow model stuck on its own executor's thread times out here and keeps only that
    thread; the worker answers later items, and the primary's executor is untouched."""
    registry, results = CollectorRegistry(), list[Outcome]()
    stuck = threading.Event()
    shadow_threads, primary_threads = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()

    def model(item: int) -> int:
        if item == 0:
            stuck.wait(10)
        return item

    def call(item: int) -> Awaitable[int]:
        return loop.run_in_executor(shadow_threads, model, item)

    runner = _runner(call, registry, results, workers=1, time_limit=0.05)
    runner.start()
    try:
        with _Ticker() as ticker:
            runner.submit(0)
            runner.submit(1)  # queues behind the pinned thread: times out too, as documented
            assert await loop.run_in_executor(primary_threads, model, 7) == 7
            await _until(lambda: len(results) == 2)
            assert [type(outcome) for _, outcome, _ in results] == [TimeoutError, TimeoutError]
            stuck.set()  # the model returns at last; its result was thrown away
            runner.submit(2)
            await _until(lambda: len(results) == 3)
        assert results[-1][:2] == (2, 2)
        assert ticker.worst < 0.05
    finally:
        stuck.set()
        await runner.close(1.0)
        shadow_threads.shutdown()
        primary_threads.shutdown()


async def test_queue_full_drops_are_counted_and_refused() -> None:
    """Beyond queue_size waiting items, submit returns False and counts queue_full."""
    registry, results = CollectorRegistry(), list[Outcome]()
    never = asyncio.Event()

    async def call(item: int) -> None:
        await never.wait()

    runner = _runner(call, registry, results, workers=1, queue_size=10, time_limit=30.0)
    runner.start()
    runner.submit(-1)
    await _until(lambda: runner.queued == 0)  # the worker holds the first item
    accepted = [runner.submit(i) for i in range(100)]
    assert accepted == [True] * 10 + [False] * 90
    assert _dropped(registry, "queue_full") == 90
    assert registry.get_sample_value("stalwart_shadow_queued", {"shadow": "s1"}) == 10
    assert await runner.close(0.05) == 10
    assert _dropped(registry, "closed") == 10


@pytest.fixture
def _frozen_heap() -> Iterator[None]:
    """The heap earlier tests left, frozen out of the collector (as `stalwart serve` freezes
    what it loaded, STALWART_GC_FREEZE): a full collection of a whole suite's objects, set off
    by the raised exceptions' cycles, would be measured here as the loop's lag."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("_frozen_heap")
@pytest.mark.parametrize("behaviour", ["hangs", "raises", "slow"])
async def test_submits_stay_cheap_and_the_loop_responsive(behaviour: str) -> None:
    """With a shadow that hangs, raises or is slow, 20,000 submits cost microseconds each
    whether the queue is empty or holds 100,000 items, and the loop is never held up."""
    registry = CollectorRegistry()
    never = asyncio.Event()

    async def call(item: int) -> int:
        if behaviour == "hangs":
            await never.wait()
        elif behaviour == "raises":
            raise RuntimeError("shadow broke")
        else:
            await asyncio.sleep(0.02)
        return item

    outcomes = 0

    def on_result(item: int, outcome: object, latency: float) -> None:
        nonlocal outcomes  # counted, not kept: 100,000 kept exceptions would time the GC instead
        outcomes += 1

    runner: ShadowRunner[int, int] = ShadowRunner(
        "s1", call, on_result, metrics=ShadowMetrics(registry), workers=4, queue_size=200_000, time_limit=0.1
    )
    runner.start()

    def burst(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            runner.submit(i)
        return (time.perf_counter() - start) / n

    with _Ticker() as ticker:
        costs_empty = []
        for _ in range(20):
            costs_empty.append(burst(1000))
            await asyncio.sleep(0.002)  # the loop runs between bursts: workers, ticker
        for _ in range(100):
            burst(1000)
            await asyncio.sleep(0)  # the caller yields between requests, as a server does
        costs_full = []
        for _ in range(20):
            costs_full.append(burst(1000))
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.3)  # workers running (raising, timing out) while the ticker runs
    empty, full = statistics.median(costs_empty), statistics.median(costs_full)
    assert empty < 20e-6, empty
    assert full < 20e-6, full
    # O(1): a long queue costs nothing more (an O(n) submit would cost milliseconds here; the
    # margin is for a shared machine's scheduling noise)
    assert full < 3 * empty + 5e-6, (empty, full)
    assert ticker.worst < 0.1, ticker.worst  # a blocked loop would show the 0.1 s time limit and more
    assert statistics.median(ticker.lags) < 0.005
    assert outcomes > 0  # the workers ran (answered, raised or timed out) meanwhile
    await runner.close(0.2)


@pytest.mark.parametrize("behaviour", ["hangs", "ignores_cancel"])
async def test_close_returns_within_its_timeout(behaviour: str) -> None:
    """close(timeout) returns in time with calls stuck in every worker; later submits are refused."""
    registry, results = CollectorRegistry(), list[Outcome]()
    never = asyncio.Event()

    async def call(item: int) -> None:
        while not never.is_set():
            try:
                await never.wait()
            except asyncio.CancelledError:
                if behaviour == "hangs":
                    raise

    runner = _runner(call, registry, results, workers=3, time_limit=60.0)
    runner.start()
    for i in range(10):
        runner.submit(i)
    await asyncio.sleep(0.01)
    start = time.monotonic()
    left = await runner.close(0.2)
    assert time.monotonic() - start < 0.3
    assert left == 7
    assert not runner.submit(11)
    assert _dropped(registry, "closed") == 8
    never.set()  # let the stubborn calls end so the test leaves no task behind
    await asyncio.sleep(0.01)


async def test_a_failing_on_result_does_not_stop_the_worker() -> None:
    """An exception from on_result is logged; later answers still arrive."""
    registry, seen = CollectorRegistry(), []

    async def call(item: int) -> int:
        return item

    def on_result(item: int, outcome: object, latency: float) -> None:
        seen.append(item)
        if item == 0:
            raise KeyError("callback bug")

    runner: ShadowRunner[int, int] = ShadowRunner("s1", call, on_result, metrics=ShadowMetrics(registry), workers=1)
    runner.start()
    runner.submit(0)
    runner.submit(1)
    await _until(lambda: seen == [0, 1])
    await runner.close(1.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"workers": 0}, "workers"), ({"queue_size": 0}, "queue_size"), ({"time_limit": 0.0}, "time_limit"),
     ({"time_limit": float("nan")}, "time_limit"), ({"max_abandoned": -1}, "max_abandoned")],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], field: str) -> None:
    """Impossible settings fail at construction, naming the setting."""

    async def call(item: int) -> int:
        return item

    with pytest.raises(ConfigError, match=field):
        _runner(call, CollectorRegistry(), [], **kwargs)
