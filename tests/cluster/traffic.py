"""Steady load for the cluster tests: a pool of threads, each with an httpx client of its
own (keep-alive), sending the fraud deployment one prediction after another until stopped.

Every request carries an ``X-Request-ID`` of the traffic's own, so a test can find it in
nginx's access log (which replica served it) and in the prediction log (whether it was
recorded), and knows when it was sent and when it was answered.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import httpx

from tests.serving.conftest import predict_body

PREDICT = "/v1/deployments/fraud/predict"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: its id, when it was sent and when it ended (``time.time()``), the
    status (0: no answer, ``error`` says why)."""

    request_id: str
    sent: float
    ended: float
    status: int
    error: str = ""

    def in_flight_during(self, start: float, end: float) -> bool:
        """Whether it was sent before ``end`` and ended after ``start``."""
        return self.sent <= end and self.ended >= start


class Traffic:
    """``clients`` threads predicting for ``cards`` in turn at ``url`` until the block
    exits; ``outcomes`` holds every request's :class:`Outcome` (thread-safe to read after)."""

    def __init__(self, url: str, cards: list[int], *, clients: int = 6, tag: str = "load") -> None:
        self.url = url
        self.cards = cards
        self.clients = clients
        self.tag = tag
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._pool = ThreadPoolExecutor(clients, thread_name_prefix=f"traffic-{tag}")
        self._runs: list[Future[None]] = []

    def __enter__(self) -> Traffic:
        self._runs = [self._pool.submit(self._client, i) for i in range(self.clients)]
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._halt.set()
        self._pool.shutdown(wait=True)
        for run in self._runs:
            run.result()  # a bug in the client loop fails the test, not silently

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = 0
            while not self._halt.is_set():
                card = self.cards[(index + n * self.clients) % len(self.cards)]
                request_id = f"{self.tag}-{index}-{n}"
                n += 1
                sent = time.time()
                try:
                    response = client.post(PREDICT, json=predict_body(card, features=False), headers={"x-request-id": request_id})
                    outcome = Outcome(request_id, sent, time.time(), response.status_code)
                except httpx.HTTPError as exc:
                    outcome = Outcome(request_id, sent, time.time(), 0, repr(exc))
                with self._lock:
                    self.outcomes.append(outcome)

    @property
    def answered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]
