"""The chaos run's traffic: a fixed pool of fraud requests, the healthy answers to them, and
the probe that sends them at a steady rate while faults come and go.

The pool holds two requests per card, an ordinary purchase and a suspicious one (a risky
category at several times the card's usual amount, as the generator's fraud bursts are),
shuffled, so the healthy model flags a share of them and a constant answer cannot agree
with every one. The probe is open loop: request ``i`` is due at ``start + i / rate``
whatever the server does, and its latency counts from then (a stalled server builds a
queue instead of slowing the probe down), as ``benchmarks/load.py`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import numpy as np

__all__ = ["Answer", "Probe", "Sample", "baseline", "paced", "request_pool"]

PATH = "/v1/deployments/fraud/predict"
RISKY = ("electronics", "gift_cards", "jewelry")
ORDINARY = ("groceries", "restaurants", "fuel", "online", "pharmacy", "clothing")


def request_pool(frame: Any, cards: int = 1000, seed: int = 11) -> list[bytes]:
    """JSON bodies for ``/v1/deployments/fraud/predict``: an ordinary and a suspicious
    purchase for each of ``cards`` cards of the generated transactions, shuffled."""
    rng = np.random.default_rng(seed)
    levels = frame.groupby("card_id")["amount"].median()
    chosen = rng.choice(levels.index.to_numpy(), size=min(cards, len(levels)), replace=False)
    bodies = []
    for card in chosen:
        level = float(levels[card])
        ordinary = round(level * float(rng.lognormal(0.0, 0.4)), 2)
        suspicious = round(level * float(rng.uniform(3.0, 12.0)), 2)
        bodies.append(_body(int(card), ordinary, str(rng.choice(ORDINARY))))
        bodies.append(_body(int(card), suspicious, str(rng.choice(RISKY))))
    order = rng.permutation(len(bodies))
    return [bodies[i] for i in order]


def _body(card: int, amount: float, category: str) -> bytes:
    return msgspec.json.encode({"entities": [{"card_id": card}], "values": [{"amount": amount, "merchant_category": category}]})


@dataclass(frozen=True, slots=True)
class Answer:
    """What one answer said: the decision, the fraud score, and the ladder step (if any)."""

    predict: int
    score: float
    degraded: str | None


def read_answer(content: bytes) -> Answer | None:
    """The first prediction of a 200 answer's body, or None if it has none."""
    try:
        body = msgspec.json.decode(content)
        first = body["predictions"][0]
        proba = first.get("predict_proba")
        score = float(proba[1]) if proba else float("nan")
        degraded = body.get("degraded")
        return Answer(int(first["predict"]), score, degraded["level"] if degraded else None)
    except (msgspec.DecodeError, KeyError, IndexError, TypeError, ValueError):
        return None


def baseline(url: str, pool: Sequence[bytes], *, concurrency: int = 4) -> list[Answer]:
    """The healthy answers to every request of ``pool`` (from the reference server); a
    request the healthy system does not answer is an error here."""

    async def run() -> list[Answer]:
        answers: list[Answer | None] = [None] * len(pool)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(pool)):
            queue.put_nowait(i)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    # On a busy machine the reference too may shed a request (503) or time its
                    # model out (a fallback answer): asked again, it answers healthily.
                    for _ in range(20):
                        response = await client.post(PATH, content=pool[i], headers={"content-type": "application/json"})
                        answer = read_answer(response.content) if response.status_code == 200 else None
                        if answer is not None and answer.degraded is None:
                            break
                        await asyncio.sleep(0.2)
                    if answer is None or answer.degraded is not None:
                        raise RuntimeError(f"the reference server did not answer request {i} healthily: {response.status_code} {response.text[:300]}")
                    answers[i] = answer

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return [a for a in answers if a is not None]

    return asyncio.run(run())


PACED_WORKERS = 64


async def paced(
    rate: float,
    stop: threading.Event,
    send: Callable[[int, float], Awaitable[None]],
    on_due: Callable[[int], None] | None = None,
    *,
    workers: int = PACED_WORKERS,
    drain: float = 11.0,
) -> None:
    """Open loop: request ``i`` is due at ``start + i / rate`` until ``stop`` is set, and is
    sent by the first of ``workers`` senders free (``send(i, due)``, latency counted from
    ``due``), so a slow server builds a backlog here rather than slowing the schedule down.
    A fixed set of senders keeps httpx's pool small (its cost grows with the requests
    waiting in it); ``drain`` bounds the wait for the backlog once stopped."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

    async def sender() -> None:
        while True:
            i, due = await queue.get()
            try:
                await send(i, due)
            finally:
                queue.task_done()

    senders = [asyncio.create_task(sender()) for _ in range(workers)]
    try:
        start = loop.time() + 0.02
        i = 0
        while not stop.is_set():
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((i, due))
            if on_due is not None:
                on_due(i)
            i += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.join(), drain)
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)


@dataclass(slots=True)
class Sample:
    """One probe request: which pool entry, when it was due (monotonic s), its latency (s),
    status (0: no answer), request id and answer."""

    index: int
    due: float
    latency: float
    status: int
    request_id: str = ""
    answer: Answer | None = None
    error: str = ""  # the start of a failed answer's body


@dataclass
class Probe:
    """Sends the pool round robin at ``rate`` requests/s from a thread of its own until
    stopped; :attr:`samples` grows as answers arrive."""

    url: str
    pool: Sequence[bytes]
    rate: float = 40.0
    timeout: float = 10.0
    samples: list[Sample] = field(default_factory=list)
    offset: int = 0  # where in the pool to start
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Probe:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="chaos-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop sending; wait for what is in flight (at most the request timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self.samples

    @property
    def next_index(self) -> int:
        """Where the next probe should start in the pool, to go on where this one stopped."""
        return self.offset + self.sent

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        to_wall = time.monotonic() - loop.time()
        limits = httpx.Limits(max_connections=PACED_WORKERS, max_keepalive_connections=PACED_WORKERS)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=self.timeout) as client:

            async def send(i: int, due: float) -> None:
                await self._one(client, self.offset + i, due, to_wall)

            def counted(i: int) -> None:
                self.sent = i + 1

            await paced(self.rate, self._stop, send, counted, drain=self.timeout + 1)

    async def _one(self, client: httpx.AsyncClient, index: int, due: float, to_wall: float) -> None:
        loop = asyncio.get_running_loop()
        body = self.pool[index % len(self.pool)]
        sample = Sample(index, due + to_wall, 0.0, 0)
        try:
            response = await client.post(PATH, content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError:
            pass
        else:
            sample.status = response.status_code
            sample.request_id = response.headers.get("x-request-id", "")
            if response.status_code == 200:
                sample.answer = read_answer(response.content)
            else:
                sample.error = response.text[:160]
        sample.latency = loop.time() - due
        self.samples.append(sample)
