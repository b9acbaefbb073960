"""Admission control for a deployment: turn requests away at once when it is over
capacity, rather than queueing them until every request is late.

Two signals, either or both:

* **In flight**: at most ``max_in_flight`` admitted requests at a time.
* **Queue wait**: how long the request at the head of the queue has been waiting for
  service (admitted and queued, not yet started): a new request will wait at least that
  long. It is read when a request arrives, so it rises as a queue stands and falls the
  moment the queue drains; a wait measured as requests *leave* the queue lags by the very
  wait it measures, and a shedder fed with it swings between admitting everything and
  refusing everything. A burst after a quiet spell has a young head and is admitted (the
  in-flight limit bounds how much of it). :meth:`Admission.start` marks where service
  begins; without it a request counts as queued until it is done.

Priorities shed cheap traffic first: a request of priority ``p`` may only use
``priority_shares[p]`` of the capacity (of the in-flight limit and of the queue-wait
budget), so as load rises low-priority requests are refused first and the last slice of
capacity is kept for high-priority ones.

A refusal is :class:`~stalwart.errors.Overloaded`, whose ``retry_after`` estimates when
capacity frees up (from the recent completion rate), for the HTTP edge's 503
``Retry-After``. The shedder is a plain, thread-safe object: the lead wires it into HTTP.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stalwart.durations import Seconds
from stalwart.errors import Overloaded, RequestError
from stalwart.resilience.breaker import Clock

__all__ = [
    "Admission",
    "LoadShedder",
    "Priority",
    "ShedderConfig",
    "ShedderSnapshot",
    "parse_priority",
]


class Priority(IntEnum):
    """How much a request matters when capacity runs short (higher is kept longer)."""

    LOW = 0
    NORMAL = 1
    HIGH = 2


_BY_NAME = {p.name.lower(): p for p in Priority}


def parse_priority(value: str | int | None, default: Priority = Priority.NORMAL) -> Priority:
    """A priority from a header or a setting: a name (``"low"``), a number, or None.

    Raises :class:`RequestError` for anything else, so a client learns its header is wrong.

    >>> parse_priority("HIGH"), parse_priority("0"), parse_priority(None)
    (<Priority.HIGH: 2>, <Priority.LOW: 0>, <Priority.NORMAL: 1>)
    """
    if value is None or value == "":
        return default
    if isinstance(value, Priority):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _BY_NAME:
            return _BY_NAME[text]
        if text.lstrip("-").isdigit():
            value = int(text)
    if isinstance(value, int) and Priority.LOW <= value <= Priority.HIGH:
        return Priority(value)
    raise RequestError(
        f"unknown priority {value!r}; use low, normal or high (or 0, 1, 2)", field="priority"
    )


_DEFAULT_SHARES = {Priority.LOW: 0.5, Priority.NORMAL: 0.9, Priority.HIGH: 1.0}


class ShedderConfig(BaseModel):
    """Capacity of one deployment. None switches a signal off.

    Defaults: 1024 requests in flight (far more than a few cores can serve concurrently, even
    with batching, but a bound on the backlog) and 100 ms of expected queue wait (a tenth of
    the default 1 s guard timeout: accepted requests stay close to their unloaded latency,
    which is the point of shedding; a deployment whose model takes longer per call raises
    it). Normal traffic may use 90% of the capacity and low-priority traffic half of it;
    the last 10% is kept for high-priority requests. Set ``priority_shares={"normal": 1.0}`` when no
    client sends priorities.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_in_flight: int | None = Field(1024, ge=1)
    max_queue_wait: Seconds | None = Field(0.1, gt=0)
    priority_shares: dict[Priority, float] = Field(default_factory=lambda: dict(_DEFAULT_SHARES))
    throughput_window: Seconds = Field(2.0, gt=0)
    min_retry_after: Seconds = Field(1.0, ge=0)
    max_retry_after: Seconds = Field(30.0, gt=0)

    @field_validator("priority_shares", mode="before")
    @classmethod
    def _fill_shares(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        shares: dict[Priority, Any] = dict(_DEFAULT_SHARES)
        for key, share in value.items():
            try:
                shares[parse_priority(key)] = share
            except RequestError as exc:
                raise ValueError(exc.message) from exc
        return shares

    @model_validator(mode="after")
    def _check(self) -> ShedderConfig:
        shares = [self.priority_shares[p] for p in Priority]
        if any(not 0 < s <= 1 for s in shares):
            raise ValueError("every priority share must be above 0 and at most 1")
        if shares != sorted(shares):
            raise ValueError("a higher priority must not get a smaller share than a lower one")
        if self.min_retry_after > self.max_retry_after:
            raise ValueError("min_retry_after must not exceed max_retry_after")
        return self


@dataclass(frozen=True, slots=True)
class ShedderSnapshot:
    """Load of a deployment; ``admitted`` and ``shed`` only grow (Prometheus counters)."""

    name: str
    in_flight: int
    max_in_flight: int | None
    queue_wait: float
    max_queue_wait: float | None
    throughput: float
    admitted: int
    shed: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "queue_wait": self.queue_wait,
            "max_queue_wait": self.max_queue_wait,
            "throughput": self.throughput,
            "admitted": self.admitted,
            "shed": dict(self.shed),
        }


class Admission:
    """One admitted request. Call :meth:`start` when its service begins (optional, feeds
    the queue-wait signal; safe from a worker thread) and :meth:`done` when it is answered
    (or use it as a context manager). Both are idempotent. A request that does other work
    before it waits for service (fetching its features) calls :meth:`queued` when that is
    done, so that work does not count as queueing."""

    __slots__ = ("_done", "_shedder", "_started", "_waiting", "admitted_at", "priority", "queued_at")

    def __init__(self, shedder: LoadShedder, priority: Priority, admitted_at: float, *, queued: bool = True) -> None:
        self._shedder = shedder
        self.priority = priority
        self.admitted_at = admitted_at
        self.queued_at = admitted_at
        self._started = False
        self._done = False
        self._waiting = queued  # in the shedder's queue of requests waiting for service

    def queued(self) -> None:
        """The request now waits for its service; :meth:`start` measures the wait from here.

        A request admitted with ``queued=False`` (it has other work first, such as fetching
        its features) calls this when that is done. Without it, a feature source that takes
        its full time limit would look like a standing queue, and the shedder would turn
        away requests that the deployment is answering on time (degraded)."""
        if self._started or self._done:
            return
        self.queued_at = self._shedder._clock()
        self._waiting = True
        self._shedder._on_queued(self)

    def start(self) -> None:
        if self._started or self._done:
            return
        self._started = True
        self._shedder._on_start(self)

    def done(self) -> None:
        if self._done:
            return
        self._done = True
        self._shedder._on_done(self)

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.done()


class _RateCounter:
    """Events per second over a sliding window, in eight buckets."""

    __slots__ = ("_buckets", "_head", "_width", "_window", "total")

    _N = 8

    def __init__(self, window: float, now: float) -> None:
        self._window = window
        self._width = window / self._N
        self._buckets = [0] * self._N
        self._head = math.floor(now / self._width)
        self.total = 0

    def _refresh(self, now: float) -> None:
        tick = math.floor(now / self._width)
        head = self._head
        if tick <= head:
            return
        for t in range(tick - min(tick - head, self._N) + 1, tick + 1):
            i = t % self._N
            self.total -= self._buckets[i]
            self._buckets[i] = 0
        self._head = tick

    def add(self, now: float) -> None:
        self._refresh(now)
        self._buckets[self._head % self._N] += 1
        self.total += 1

    def rate(self, now: float) -> float:
        self._refresh(now)
        return self.total / self._window


class LoadShedder:
    """Admission control for one deployment; see the module docstring.

    >>> shedder = LoadShedder("churn", ShedderConfig(max_in_flight=2))
    >>> with shedder.admit(Priority.HIGH):
    ...     pass  # serve the request
    """

    def __init__(self, name: str, config: ShedderConfig | None = None, *, clock: Clock = time.monotonic) -> None:
        cfg = config if config is not None else ShedderConfig()
        self._name = name
        self._config = cfg
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        # Admitted requests waiting for service, oldest first: {id(admission): queued_at}.
        self._queue: dict[int, float] = {}
        self._admitted = 0
        self._shed = dict.fromkeys(Priority, 0)
        now = clock()
        self._completions = _RateCounter(cfg.throughput_window, now)
        shares = cfg.priority_shares
        # Per priority: in-flight allowance (rounded up, so an idle deployment admits
        # anything) and queue-wait allowance.
        self._slots = {
            p: math.ceil(cfg.max_in_flight * shares[p] - 1e-9) if cfg.max_in_flight else None
            for p in Priority
        }
        self._budgets = {
            p: cfg.max_queue_wait * shares[p] if cfg.max_queue_wait else None for p in Priority
        }

    @property
    def name(self) -> str:
        return self._name

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def admit(self, priority: Priority = Priority.NORMAL, *, queued: bool = True) -> Admission:
        """Admit one request, or raise :class:`Overloaded` at once. ``queued=False``: the
        request does other work before it waits for service, and says so with
        :meth:`Admission.queued`."""
        now = self._clock()
        with self._lock:
            slots = self._slots[priority]
            if slots is not None and self._in_flight >= slots:
                self._shed[priority] += 1
                raise self._refuse_in_flight(priority, slots, now)
            budget = self._budgets[priority]
            if budget is not None:
                wait = self._queue_wait(now)
                if wait > budget:
                    self._shed[priority] += 1
                    raise self._refuse_queue(priority, wait, budget)
            self._in_flight += 1
            self._admitted += 1
            admission = Admission(self, priority, now, queued=queued)
            if queued:
                self._queue[id(admission)] = now
        return admission

    def snapshot(self) -> ShedderSnapshot:
        now = self._clock()
        cfg = self._config
        with self._lock:
            return ShedderSnapshot(
                name=self._name,
                in_flight=self._in_flight,
                max_in_flight=cfg.max_in_flight,
                queue_wait=self._queue_wait(now),
                max_queue_wait=cfg.max_queue_wait,
                throughput=self._completions.rate(now),
                admitted=self._admitted,
                shed={p.name.lower(): n for p, n in self._shed.items()},
            )

    # -- the machinery ------------------------------------------------------------------

    def _queue_wait(self, now: float) -> float:
        """How long the head of the queue has waited (0 with no queue). Lock held."""
        for queued_at in self._queue.values():
            return now - queued_at
        return 0.0

    def _on_queued(self, admission: Admission) -> None:
        with self._lock:
            self._queue.pop(id(admission), None)  # moves to the back: it queues from now
            self._queue[id(admission)] = admission.queued_at

    def _on_start(self, admission: Admission) -> None:
        with self._lock:
            self._queue.pop(id(admission), None)

    def _on_done(self, admission: Admission) -> None:
        now = self._clock()
        with self._lock:
            self._in_flight -= 1
            self._queue.pop(id(admission), None)
            self._completions.add(now)

    def _retry_after(self, seconds: float) -> float:
        cfg = self._config
        return min(max(seconds, cfg.min_retry_after), cfg.max_retry_after)

    def _refuse_in_flight(self, priority: Priority, slots: int, now: float) -> Overloaded:
        rate = self._completions.rate(now)
        excess = self._in_flight - slots + 1
        retry = self._retry_after(excess / rate if rate > 0 else 0.0)
        share = "" if slots == self._config.max_in_flight else f" of them for {priority.name.lower()} priority"
        return Overloaded(
            f"deployment '{self._name}' is over capacity ({self._in_flight} requests in flight, "
            f"{slots}{share}); retry after {retry:.0f} s, or send fewer concurrent requests",
            retry_after=retry,
        )

    def _refuse_queue(self, priority: Priority, wait: float, budget: float) -> Overloaded:
        retry = self._retry_after(wait)
        return Overloaded(
            f"deployment '{self._name}' is over capacity: requests queue for {wait * 1000:.0f} ms "
            f"before service, over the {budget * 1000:.0f} ms allowed for "
            f"{priority.name.lower()} priority; retry after {retry:.0f} s",
            retry_after=retry,
        )
