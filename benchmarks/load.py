"""HTTP load generators for end-to-end benchmarks: closed loop (N clients, each sending its
next request when the last one answers) and open loop (requests at a fixed arrival rate,
whatever the server does, so a slow server builds a queue instead of slowing the clients
down). Both use one ``httpx.AsyncClient`` with keep-alive connections on loopback.

Open-loop latency is measured from each request's *scheduled* send time, so time spent
behind a lagging generator counts against the server rather than vanishing (no
coordinated omission); ``lag_p99_ms`` says how far behind schedule requests actually left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import numpy as np

__all__ = ["Outcome", "closed_loop", "open_loop", "percentile"]

Body = Callable[[int], bytes]
_HEADERS = {"content-type": "application/json"}


@dataclass(slots=True)
class Outcome:
    """One request: when it was due (s, monotonic), how long until it was answered (s),
    the HTTP status (0: no answer: a transport error or the run's time bound), and how
    late the generator sent it (s)."""

    due: float
    latency: float
    status: int
    lag: float = 0.0


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


async def _send(client: httpx.AsyncClient, path: str, content: bytes) -> int:
    try:
        response = await client.post(path, content=content, headers=_HEADERS)
    except httpx.HTTPError:
        return 0
    return response.status_code


async def closed_loop(url: str, path: str, body: Body, *, concurrency: int, duration: float, requests: int | None = None) -> tuple[list[Outcome], float]:
    """``concurrency`` clients back to back for ``duration`` seconds (or until ``requests``
    answers); returns the outcomes and the elapsed seconds."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    outcomes: list[Outcome] = []
    counter = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        start = time.monotonic()
        stop = start + duration

        async def worker() -> None:
            nonlocal counter
            while time.monotonic() < stop and (requests is None or counter < requests):
                i = counter
                counter += 1
                sent = time.monotonic()
                status = await _send(client, path, body(i))
                outcomes.append(Outcome(sent, time.monotonic() - sent, status))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outcomes, time.monotonic() - start


async def open_loop(url: str, path: str, body: Body, *, rate: float, duration: float, drain: float) -> list[Outcome]:
    """Requests due every ``1 / rate`` seconds for ``duration`` seconds; those unanswered
    ``drain`` seconds after the last was due are abandoned (status 0)."""
    n = max(1, round(rate * duration))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=1000)
    outcomes: list[Outcome] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=duration + drain) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        wall = time.monotonic() - loop.time()  # loop time -> time.monotonic

        async def one(due: float, content: bytes) -> None:
            lag = loop.time() - due
            status = 0  # stays 0 if the run's time bound cancels the request
            try:
                status = await _send(client, path, content)
            finally:
                outcomes.append(Outcome(due + wall, loop.time() - due, status, lag))

        tasks = []
        for i in range(n):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, body(i))))
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, start + duration + drain - loop.time()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return outcomes
