"""Shadow deployments in the server: each sampled request copied to each shadow, off the
critical path, and the shadow's answer paired with the one the client got.

The data plane calls :meth:`Shadows.submit` once a request's answer is ready (the primary's
or the canary's; or its failure, before the ladder steps down), with the shadows the
router sampled for the request's routing key. Per shadow that is one O(1) ``submit`` into
the shadow's :class:`~stalwart.rollout.shadow_runner.ShadowRunner`; the response never
waits for a shadow. The runner's workers run the shadow's call, which is the variant path
of the data plane (its plan, features and chain, with its own breaker and an executor of
its own) without the shedder, the ladder, the prediction log or live profiles, and hand
the outcome here, where it is paired (:mod:`stalwart.rollout.shadow_pairs`) and, every
``flush_seconds`` and at shutdown, written to ``shadow_pairs``
(:mod:`stalwart.rollout.shadow_store`) on a worker thread.

**Runners** are kept by (deployment, shadow, model, version, time limit) and made on first
use, never by policy object: a deployment's policy may be replaced at run time (other
shadows, another version), and the next request simply uses (or makes) the runner its
policy names. Runners no current policy names are closed at the next flush; all at
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from stalwart.errors import StalwartError
from stalwart.monitoring.logs import get_logger
from stalwart.project.deployment import DEFAULT_SHADOW_TIME_LIMIT
from stalwart.rollout.shadow_pairs import PairBuckets
from stalwart.rollout.shadow_runner import ShadowMetrics, ShadowRunner
from stalwart.rollout.shadow_store import replica_name, write_buckets
from stalwart.serving.policies import DeploymentPolicy, Variant
from stalwart.storage import Database

if TYPE_CHECKING:
    from stalwart.serving.dataplane import PredictRequest

__all__ = ["ShadowAnswer", "ShadowCall", "Shadows"]

_log = get_logger("stalwart.shadow")
_LOG_EVERY = 10.0
_CLOSE_SECONDS = 2.0  # how long closing runners lets their queued calls finish

RunnerKey = tuple[str, str, str, int | None, float]  # deployment, shadow, model, version, time limit


class ShadowAnswer(Protocol):
    """What a shadow call answers (a :class:`~stalwart.serving.dataplane.Prediction`)."""

    @property
    def predictions(self) -> list[dict[str, Any]]: ...

    @property
    def model(self) -> tuple[str, int] | None: ...


@dataclass(slots=True)
class ShadowCall:
    """One request's copy for one shadow, with the answer the client got."""

    policy: DeploymentPolicy
    variant: Variant
    time_limit: float
    request: PredictRequest
    request_id: str
    arrived_ns: int
    primary: list[dict[str, Any]] | None  # the client's prediction rows; None: the variant failed
    primary_model: str | None  # "name:version" of what answered the client
    primary_latency: float  # seconds


class Shadows:
    """The server's shadow runners and the pairs they produce; see the module docstring.

    ``serve`` runs one :class:`ShadowCall` (the data plane's shadow path); ``policies``
    returns the deployments' current policies (read at each flush to retire runners).
    Create it anywhere, :meth:`start` it on the server's event loop, ``await``
    :meth:`close` at shutdown.
    """

    def __init__(
        self,
        serve: Callable[[ShadowCall], Awaitable[ShadowAnswer]],
        database: Database,
        metrics: ShadowMetrics,
        *,
        policies: Callable[[], Mapping[str, DeploymentPolicy]],
        workers: int = 2,  # calls in flight per shadow: its share of a saturated server (docs/rollouts.md)
        queue_size: int = 1024,
        flush_seconds: float = 10.0,
        replica: str | None = None,
    ) -> None:
        self.replica = replica or replica_name()
        self._serve = serve
        self._database = database
        self._metrics = metrics
        self._policies = policies
        self._workers = workers
        self._queue_size = queue_size
        self._flush_seconds = flush_seconds
        self._runners: dict[RunnerKey, ShadowRunner[ShadowCall, ShadowAnswer]] = {}
        self._retiring: set[asyncio.Task[int]] = set()
        self._buckets = PairBuckets()
        self._dropped_seen = 0
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._last_log = -math.inf

    # --- the request path ----------------------------------------------------------------

    def submit(
        self,
        policy: DeploymentPolicy,
        shadows: tuple[str, ...],
        request: PredictRequest,
        request_id: str,
        arrived_ns: int,
        primary: ShadowAnswer | None,
        latency: float,
    ) -> None:
        """Hand each of ``shadows`` (names the router sampled) a copy of the request; O(1)
        per shadow, never awaits. ``primary`` is the client's answer from a model (None
        when the variant failed), ``latency`` its seconds."""
        if self._closing:
            return
        rows = primary.predictions if primary is not None else None
        model = primary.model if primary is not None else None
        ref = f"{model[0]}:{model[1]}" if model is not None else None
        limits = policy.shadow_time_limits
        deployment = policy.deployment.name
        for variant in policy.shadows:
            if variant.name not in shadows:
                continue
            limit = limits.get(variant.name, DEFAULT_SHADOW_TIME_LIMIT)
            key = (deployment, variant.name, variant.model, variant.version, limit)
            runner = self._runners.get(key)
            if runner is None:
                runner = self._runner(key)
            runner.submit(ShadowCall(policy, variant, limit, request, request_id, arrived_ns, rows, ref, latency))

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start flushing pairs every ``flush_seconds`` (on the running loop)."""
        self._flusher = asyncio.get_running_loop().create_task(self._flush_every(), name="stalwart-shadow-flush")

    async def close(self, timeout: float = _CLOSE_SECONDS) -> None:
        """Stop taking copies, let queued shadow calls finish for up to ``timeout`` seconds
        (then abandon them), and write every pair still in memory."""
        self._closing = True
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        runners, self._runners = list(self._runners.values()), {}
        await asyncio.gather(*(r.close(timeout) for r in runners), *self._retiring)
        await self.flush()

    async def flush(self) -> bool:
        """Write the pairs in memory now (on a worker thread). False when the database
        refused: they are kept and written with the next flush."""
        taken = self._buckets.take()
        if not taken:
            return True
        try:
            await asyncio.to_thread(write_buckets, self._database, taken, self.replica)
        except (StalwartError, SQLAlchemyError) as exc:
            self._metrics.write_failures.inc()
            self._buckets.restore(taken)
            dropped = self._buckets.dropped_pairs - self._dropped_seen
            if dropped:
                self._dropped_seen += dropped
                self._metrics.unwritten.inc(dropped)
            self._note("shadow pairs: writing failed; kept in memory and retried", exc)
            return False
        return True

    @property
    def runners(self) -> int:
        """Runners alive now (one per deployment, shadow and model version in use)."""
        return len(self._runners)

    # --- internals -------------------------------------------------------------------------

    def _runner(self, key: RunnerKey) -> ShadowRunner[ShadowCall, ShadowAnswer]:
        deployment, shadow, _model, _version, limit = key
        runner: ShadowRunner[ShadowCall, ShadowAnswer] = ShadowRunner(
            f"{deployment}/{shadow}", self._serve, self._paired, metrics=self._metrics,
            workers=self._workers, queue_size=self._queue_size, time_limit=limit,
        )
        runner.start()
        self._runners[key] = runner
        return runner

    def _paired(self, call: ShadowCall, outcome: ShadowAnswer | Exception, latency: float) -> None:
        """On the loop, for every shadow call's outcome: one pair per row."""
        if isinstance(outcome, Exception):
            rows, ref = None, None
            self._note("shadow call failed", outcome, shadow=call.variant.name, deployment=call.policy.deployment.name)
        else:
            rows = outcome.predictions
            model = outcome.model
            ref = f"{model[0]}:{model[1]}" if model is not None else None
        minute = call.arrived_ns // 60_000_000_000 * 60
        self._buckets.add(
            (call.policy.deployment.name, call.variant.name, minute), call.policy.reading,
            call.primary, rows, len(call.request.entities), (call.primary_latency, latency), (call.primary_model, ref),
        )

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            await self.flush()
            self._retire()

    def _retire(self) -> None:
        """Close the runners no current policy names (a policy was replaced)."""
        live = {
            (name, v.name, v.model, v.version, policy.shadow_time_limits.get(v.name, DEFAULT_SHADOW_TIME_LIMIT))
            for name, policy in self._policies().items()
            for v in policy.shadows
        }
        for key in [k for k in self._runners if k not in live]:
            task = asyncio.get_running_loop().create_task(self._runners.pop(key).close(_CLOSE_SECONDS))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _note(self, message: str, exc: BaseException, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            text = exc.message if isinstance(exc, StalwartError) else type(exc).__name__
            _log.warning(message, error=text, **fields)
