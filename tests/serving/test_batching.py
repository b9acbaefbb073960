"""Adaptive batching: every caller gets exactly its own rows, whatever it was batched with."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stalwart.config import Settings
from stalwart.errors import ModelError, ModelInputError, NotReady
from stalwart.monitoring.metrics import BatchMetrics, ServingMetrics
from stalwart.pipeline import Arrays, Exchange
from stalwart.registry import Registry, Signature, TensorSpec
from stalwart.serving.app import create_app
from stalwart.serving.batching import AdaptiveBatcher, BatchingPolicy
from tests.servers import start_server

POISON = -999.0
OUTPUTS = ("total", "pair", "label", "count")

MATRIX = Signature(
    inputs=[TensorSpec("x", "FP64", [-1, 3])],
    outputs=[
        TensorSpec("total", "FP64", [-1]),
        TensorSpec("pair", "FP64", [-1, 2]),
        TensorSpec("label", "BYTES", [-1]),
        TensorSpec("count", "INT64", [-1]),
    ],
)
COLUMNS = Signature(
    inputs=[TensorSpec("a", "FP64", [-1]), TensorSpec("b", "INT64", [-1]), TensorSpec("name", "BYTES", [-1])],
    outputs=MATRIX.outputs,
)
RAGGED = Signature(inputs=[TensorSpec("x", "FP64", [-1, -1])], outputs=MATRIX.outputs)


class RowWise:
    """A user's model whose every output row depends on its own input row only, with
    outputs of four kinds (1-D and 2-D floats, strings, integers)."""

    def __init__(self, signature: Signature, gate: threading.Event | None = None, seconds: float = 0.0) -> None:
        self.signature = signature
        self.calls: list[int] = []
        self.gate = gate
        self.seconds = seconds

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]) -> Arrays:
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.seconds:
            time.sleep(self.seconds)  # a slower model: requests arrive while it computes
        if "x" in inputs:
            x = inputs["x"]
            names = [f"w{x.shape[1]}"] * len(x)
        else:
            names = list(inputs["name"])
            x = np.column_stack([inputs["a"], inputs["b"], [len(n) for n in names]]).astype(np.float64)
        self.calls.append(len(x))
        if (x == POISON).any():
            raise ValueError("a poisoned row")
        total = x.sum(axis=1)
        produced: Arrays = {
            "total": total,
            "pair": np.stack([x[:, 0], x[:, -1] * 2], axis=1),
            "label": np.array([f"{n}:{t:.3f}" for n, t in zip(names, total, strict=True)], dtype=object),
            "count": (x > 0).sum(axis=1).astype(np.int64),
        }
        return {name: produced[name] for name in outputs}


def _rows(signature: Signature, rows: int, seed: int, width: int = 3) -> Arrays:
    rng = np.random.default_rng(seed)
    if signature is COLUMNS:
        return {
            "a": rng.normal(size=rows),
            "b": rng.integers(-5, 5, size=rows),
            "name": np.array([f"n{v}" for v in rng.integers(0, 1000, size=rows)], dtype=object),
        }
    return {"x": rng.normal(size=(rows, width if signature is RAGGED else 3))}


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-model")
    yield pool
    pool.shutdown(wait=True)


def _batcher(model: RowWise, executor: ThreadPoolExecutor, policy: BatchingPolicy, metrics: BatchMetrics | None = None) -> AdaptiveBatcher:
    return AdaptiveBatcher(model, model.signature, "test:1", executor, policy, metrics=metrics, model="test", version="1")


requests_strategy = st.lists(
    st.tuples(
        st.integers(1, 20),  # rows
        st.permutations(OUTPUTS).flatmap(lambda p: st.integers(1, len(p)).map(lambda n: tuple(p[:n]))),
        st.integers(0, 6),  # event-loop turns before the request arrives
        st.integers(0, 2**31),  # data seed
        st.sampled_from([2, 3]),  # width, for the ragged signature
    ),
    min_size=1,
    max_size=12,
)
policies = st.builds(
    BatchingPolicy,
    max_batch_size=st.integers(1, 16),
    max_wait_ms=st.sampled_from([0.0, 0.5, 3.0]),
    adaptive=st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    signature=st.sampled_from([MATRIX, COLUMNS, RAGGED]),
    policy=policies,
    requests=requests_strategy,
    model_seconds=st.sampled_from([0.0, 0.001]),
)
def test_batched_answers_equal_unbatched_answers(
    executor: ThreadPoolExecutor,
    signature: Signature,
    policy: BatchingPolicy,
    requests: list[tuple[int, tuple[str, ...], int, int, int]],
    model_seconds: float,
) -> None:
    """Whatever the mix of sizes, output selections, datatypes and arrival order, each caller
    gets exactly what calling the model on its request alone returns, and no model call is
    ever larger than max_batch_size rows."""
    model = RowWise(signature, seconds=model_seconds)
    reference = RowWise(signature)

    async def scenario() -> list[Arrays]:
        batcher = _batcher(model, executor, policy)

        async def one(rows: int, outputs: tuple[str, ...], turns: int, seed: int, width: int) -> Arrays:
            for _ in range(turns):
                await asyncio.sleep(0)
            return await batcher.run(_rows(signature, rows, seed, width), rows, outputs)

        try:
            return await asyncio.gather(*(one(*r) for r in requests))
        finally:
            await batcher.close()

    answers = asyncio.run(scenario())
    for (rows, outputs, _turns, seed, width), answer in zip(requests, answers, strict=True):
        expected = reference.predict(_rows(signature, rows, seed, width), outputs)
        assert list(answer) == list(outputs)
        for name in outputs:
            assert answer[name].dtype == expected[name].dtype
            np.testing.assert_array_equal(answer[name], expected[name])
    assert all(rows <= policy.max_batch_size for rows in model.calls)
    assert sum(model.calls) == sum(r[0] for r in requests)


async def test_concurrent_requests_share_one_model_call(executor: ThreadPoolExecutor) -> None:
    """Requests that arrive together are answered by one model call, not one call each."""
    model = RowWise(MATRIX)
    batcher = _batcher(model, executor, BatchingPolicy(max_batch_size=64))
    try:
        answers = await asyncio.gather(*(batcher.run(_rows(MATRIX, 1, i), 1, ("total",)) for i in range(10)))
    finally:
        await batcher.close()
    assert model.calls == [10]
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer["total"], _rows(MATRIX, 1, i)["x"].sum(axis=1))


async def test_a_request_bigger_than_the_batch_is_split_not_dropped(executor: ThreadPoolExecutor) -> None:
    """A request of 50 rows with max_batch_size 8 is answered whole, from calls of at most 8 rows."""
    model = RowWise(MATRIX)
    batcher = _batcher(model, executor, BatchingPolicy(max_batch_size=8))
    inputs = _rows(MATRIX, 50, 1)
    try:
        answer = await batcher.run(inputs, 50, OUTPUTS)
    finally:
        await batcher.close()
    expected = RowWise(MATRIX).predict(inputs, OUTPUTS)
    for name in OUTPUTS:
        np.testing.assert_array_equal(answer[name], expected[name])
    assert max(model.calls) <= 8
    assert sum(model.calls) == 50


async def test_a_lone_request_does_not_wait_for_company(executor: ThreadPoolExecutor) -> None:
    """In adaptive mode a request with nobody behind it is called at once, not after max_wait_ms;
    with a fixed wait it waits for company up to max_wait_ms."""
    adaptive = _batcher(RowWise(MATRIX), executor, BatchingPolicy(max_wait_ms=2000, adaptive=True))
    fixed = _batcher(RowWise(MATRIX), executor, BatchingPolicy(max_wait_ms=300, adaptive=False))
    try:
        start = time.perf_counter()
        done = await adaptive.infer(_rows(MATRIX, 1, 0), 1, ("total",))
        lone = time.perf_counter() - start
        start = time.perf_counter()
        await fixed.run(_rows(MATRIX, 1, 0), 1, ("total",))
        waited = time.perf_counter() - start
    finally:
        await adaptive.close()
        await fixed.close()
    assert lone < 0.2
    assert done.queue_wait < 0.05
    assert waited >= 0.29


async def test_after_a_burst_a_lone_request_waits_at_most_max_wait(executor: ThreadPoolExecutor) -> None:
    """After a burst the batcher expects the burst's callers back and may hold the next
    request for them, but never longer than max_wait_ms; then it stops expecting them."""
    batcher = _batcher(RowWise(MATRIX), executor, BatchingPolicy(max_wait_ms=150))
    try:
        await asyncio.gather(*(batcher.run(_rows(MATRIX, 1, i), 1, ("total",)) for i in range(8)))
        first = await batcher.infer(_rows(MATRIX, 1, 0), 1, ("total",))
        second = await batcher.infer(_rows(MATRIX, 1, 1), 1, ("total",))
    finally:
        await batcher.close()
    assert first.queue_wait < 0.15 + 0.05
    assert second.queue_wait < 0.05


async def test_a_model_exception_fails_only_its_batch(executor: ThreadPoolExecutor) -> None:
    """When the model raises before it has ever answered (so it cannot be told apart from a
    broken model), the requests of that call get a ModelError naming the model and the
    exception's class (its message kept for the log); requests in other calls are
    answered, and the batcher keeps serving."""
    model = RowWise(MATRIX)
    batcher = _batcher(model, executor, BatchingPolicy(max_batch_size=4))
    poisoned = _rows(MATRIX, 2, 0)
    poisoned["x"][1, 0] = POISON
    try:
        results = await asyncio.gather(
            batcher.run(poisoned, 2, ("total",)),  # one call: these two requests, 4 rows
            batcher.run(_rows(MATRIX, 2, 1), 2, ("total",)),
            batcher.run(_rows(MATRIX, 4, 2), 4, ("total",)),  # the next call
            return_exceptions=True,
        )
        after = await batcher.run(_rows(MATRIX, 1, 3), 1, ("total",))
    finally:
        await batcher.close()
    assert isinstance(results[0], ModelError)
    assert isinstance(results[1], ModelError)
    assert results[0].message == "model test:1 raised ValueError"
    assert "a poisoned row" in results[0].detail
    assert isinstance(results[2], dict)
    np.testing.assert_array_equal(results[2]["total"], _rows(MATRIX, 4, 2)["x"].sum(axis=1))
    assert after["total"].shape == (1,)
    assert model.calls[:2] == [4, 4]


async def test_a_poisoned_request_is_found_and_fails_alone(executor: ThreadPoolExecutor) -> None:
    """Once the model has answered, a batch it raises on is bisected: the request whose own
    rows make it raise gets a ModelInputError (the client's 422), its batch mates their
    answers, with a bounded number of extra calls."""
    model = RowWise(MATRIX)
    batcher = _batcher(model, executor, BatchingPolicy(max_batch_size=64))
    try:
        await batcher.run(_rows(MATRIX, 1, 9), 1, ("total",))  # the model works: a probe row
        requests = [_rows(MATRIX, 1, i) for i in range(16)]
        requests[5]["x"][0, 0] = POISON
        model.calls.clear()
        results = await asyncio.gather(*(batcher.run(r, 1, ("total",)) for r in requests), return_exceptions=True)
    finally:
        await batcher.close()
    for i, result in enumerate(results):
        if i == 5:
            assert isinstance(result, ModelInputError)
            assert "raised ValueError on this request's rows" in result.message
        else:
            assert isinstance(result, dict), result
            np.testing.assert_array_equal(result["total"], requests[i]["x"].sum(axis=1))
    # One batch, the probe, then halving: far fewer calls than one per request.
    assert len(model.calls) <= 2 + 2 * 4


async def test_a_model_that_returns_the_wrong_number_of_rows_is_a_model_error(executor: ThreadPoolExecutor) -> None:
    """Outputs that do not have one row per input row cannot be split; the error says so."""

    class Aggregating(RowWise):
        def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]) -> Arrays:
            return {"total": np.array([inputs["x"].sum()])}

    batcher = _batcher(Aggregating(MATRIX), executor, BatchingPolicy())
    try:
        with pytest.raises(ModelError, match="one output row per input row"):
            await batcher.run(_rows(MATRIX, 3, 0), 3, ("total",))
    finally:
        await batcher.close()


async def test_a_cancelled_caller_leaves_its_batch_mates_alone(executor: ThreadPoolExecutor) -> None:
    """A caller that goes away while queued is dropped from the batch; the others are answered."""
    gate = threading.Event()
    model = RowWise(MATRIX, gate=gate)
    batcher = _batcher(model, executor, BatchingPolicy())
    try:
        first = asyncio.ensure_future(batcher.run(_rows(MATRIX, 1, 0), 1, ("total",)))
        await asyncio.sleep(0.05)  # the first call is now blocked in the model
        leaving = asyncio.ensure_future(batcher.run(_rows(MATRIX, 3, 1), 3, ("total",)))
        staying = asyncio.ensure_future(batcher.run(_rows(MATRIX, 2, 2), 2, ("total",)))
        await asyncio.sleep(0)
        leaving.cancel()
        gate.set()
        assert (await first)["total"].shape == (1,)
        assert (await staying)["total"].shape == (2,)
        with pytest.raises(asyncio.CancelledError):
            await leaving
    finally:
        gate.set()
        await batcher.close()
    assert model.calls == [1, 2]


async def test_close_fails_pending_callers_instead_of_hanging(executor: ThreadPoolExecutor) -> None:
    """At shutdown, callers in the running batch and in the queue get NotReady at once, and
    later callers are refused the same way."""
    gate = threading.Event()
    batcher = _batcher(RowWise(MATRIX, gate=gate), executor, BatchingPolicy(max_batch_size=1))
    try:
        running = asyncio.ensure_future(batcher.run(_rows(MATRIX, 1, 0), 1, ("total",)))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.run(_rows(MATRIX, 1, 1), 1, ("total",)))
        await asyncio.sleep(0)
        await asyncio.wait_for(batcher.close(), timeout=2)
        for caller in (running, queued):
            with pytest.raises(NotReady, match="shutting down"):
                await asyncio.wait_for(caller, timeout=2)
        with pytest.raises(NotReady):
            await batcher.run(_rows(MATRIX, 1, 2), 1, ("total",))
    finally:
        gate.set()


def test_policy_is_validated_once() -> None:
    """A policy with impossible values is refused when it is built, naming the field."""
    with pytest.raises(ValidationError, match="max_batch_size"):
        BatchingPolicy(max_batch_size=0)
    with pytest.raises(ValidationError, match="max_wait_ms"):
        BatchingPolicy(max_wait_ms=-1)
    with pytest.raises(ValidationError, match="extra"):
        BatchingPolicy(max_rows=3)  # type: ignore[call-arg]
    assert BatchingPolicy().enabled


def test_settings_read_batching_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """STALWART_BATCHING, STALWART_MAX_BATCH_SIZE, STALWART_MAX_BATCH_WAIT_MS and
    STALWART_BATCH_ADAPTIVE configure the server's default policy."""
    monkeypatch.setenv("STALWART_BATCHING", "false")
    monkeypatch.setenv("STALWART_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("STALWART_MAX_BATCH_WAIT_MS", "0.5")
    monkeypatch.setenv("STALWART_BATCH_ADAPTIVE", "false")
    got = Settings()
    assert (got.batching, got.max_batch_size, got.max_batch_wait_ms, got.batch_adaptive) == (False, 16, 0.5, False)


async def test_metrics_show_batch_sizes_waits_depth_and_model_time(executor: ThreadPoolExecutor) -> None:
    """Batch rows, requests per batch, queue wait, queue depth and model time per batch are
    exposed, labelled by model and version."""
    metrics = ServingMetrics()
    batcher = _batcher(RowWise(MATRIX), executor, BatchingPolicy(), BatchMetrics(metrics.registry))
    try:
        await asyncio.gather(*(batcher.run(_rows(MATRIX, 2, i), 2, ("total",)) for i in range(5)))
    finally:
        await batcher.close()
    text = metrics.exposition().decode()
    labels = '{model="test",version="1"}'
    assert f"stalwart_batch_rows_sum{labels} 10.0" in text
    assert f"stalwart_batch_requests_sum{labels} 5.0" in text
    assert f"stalwart_batch_queue_wait_seconds_count{labels} 5.0" in text
    assert f"stalwart_batch_model_seconds_count{labels} 1.0" in text
    assert f"stalwart_batch_queue_rows{labels} 0.0" in text


# --- through the HTTP server --------------------------------------------------------------


def _body(x: np.ndarray[Any, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": x.ravel().tolist()}], **extra}


def test_a_bad_request_fails_alone_and_its_batch_mates_are_answered(
    home: Any, registry: Registry, boosted: Any, cancer: dict[str, Any]
) -> None:
    """Requests sent together share model calls; the one with a wrong shape gets its 400 and
    every other one its own rows' answers; the access log carries each request's queue wait."""
    registry.register("breast-cancer", boosted, sample=cancer["x_train"][:20])
    settings = Settings(home=home, registry_poll_seconds=0.2, batch_adaptive=False, max_batch_wait_ms=200)
    x = cancer["x_test"]
    sent: list[np.ndarray[Any, Any] | None] = [x[i : i + 1 + i % 3] for i in range(8)]
    sent.insert(3, None)  # the bad one
    bodies = [_body(rows) if rows is not None else _body(x[:2]) for rows in sent]
    bodies[3]["inputs"][0]["shape"] = [2, 29]
    barrier = threading.Barrier(len(bodies))
    responses: list[httpx.Response | None] = [None] * len(bodies)
    with structlog.testing.capture_logs() as logs, start_server(settings, registry) as server:

        def send(i: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                barrier.wait(timeout=10)
                responses[i] = client.post("/v2/models/breast-cancer/infer", json=bodies[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        metrics = server.get("/metrics").text
    for rows, response in zip(sent, responses, strict=True):
        assert response is not None
        if rows is None:
            assert response.status_code == 400
            assert response.json()["field"] == "inputs[0].data"
            continue
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert outputs["predict"]["data"] == boosted.predict(rows).tolist()
        np.testing.assert_allclose(
            np.asarray(outputs["predict_proba"]["data"]).reshape(outputs["predict_proba"]["shape"]),
            boosted.predict_proba(rows),
        )
    batches = _sample(metrics, 'stalwart_batch_requests_count{model="breast-cancer",version="1"}')
    batched = _sample(metrics, 'stalwart_batch_requests_sum{model="breast-cancer",version="1"}')
    assert batched == 8
    assert batches < 8  # some requests shared a model call
    infer_lines = [e for e in logs if e.get("event") == "request" and e.get("endpoint") == "/v2/models/{model}/infer"]
    ok_lines = [e for e in infer_lines if e["status"] == 200]
    assert len(ok_lines) == 8
    assert all(e["queue_wait_ms"] >= 0 and "model_ms" in e for e in ok_lines)


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the exposition")


class Gated:
    """A python-flavor model that blocks until the module's gate opens."""

    gate = threading.Event()

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        Gated.gate.wait(timeout=30)
        return np.asarray(x).sum(axis=1)


async def test_the_lifespan_stops_batchers_and_fails_their_callers(settings: Settings, registry: Registry) -> None:
    """Shutting the app down answers requests still waiting on a model call with NotReady
    rather than leaving them hanging."""
    Gated.gate.clear()
    sample = np.ones((2, 3))
    Gated.gate.set()
    registry.register("gated", Gated(), sample=sample)
    Gated.gate.clear()
    app = create_app(settings, registry=registry)
    try:
        async with app.router.lifespan_context(app):
            loaded = await app.state.repository.get("gated")
            exchanges = [Exchange(request_id=str(i), inputs={"input-0": sample}, rows=2, outputs=("predict",)) for i in range(3)]
            calls = [asyncio.ensure_future(loaded.pipeline(e)) for e in exchanges]
            await asyncio.sleep(0.05)
        for call in calls:
            with pytest.raises(NotReady):
                await asyncio.wait_for(call, timeout=2)
    finally:
        Gated.gate.set()
