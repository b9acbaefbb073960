"""Prediction records published to NATS JetStream, acknowledged before a batch counts as stored.

The sink ensures a stream (``STALWART_PREDICTIONS``) bound to ``STALWART_NATS_SUBJECT``
with a duplicate window of ten minutes, and publishes each record's JSON with the header
``Nats-Msg-Id: <request id>``: JetStream drops a message whose id it saw within the window,
so a batch the prediction log replays after a timeout or a crash is stored once. A batch is
stored when every publish is acknowledged (they go out concurrently, then the acks are
gathered); a timeout, no responders or a lost connection raises
:class:`~stalwart.errors.SinkUnavailable` and the log retries the batch.

The prediction log writes from a plain thread, and nats-py is asyncio: the sink owns a
private event loop on a daemon thread and submits each call to it. nats-py reconnects on
its own; :meth:`NatsSink.close` drains the connection (in-flight acks are awaited).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart._optional import require
from stalwart.config import Settings
from stalwart.errors import ConfigError, SinkUnavailable
from stalwart.monitoring.records import PredictionRecord

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = ["NatsSink"]

STREAM = "STALWART_PREDICTIONS"
DUPLICATE_WINDOW_S = 600.0  # replays within this are dropped by JetStream; the spool replays sooner

_T = TypeVar("_T")


class NatsSink:
    """A :class:`~stalwart.monitoring.sinks.PredictionSink` publishing to JetStream (see the
    module docstring). It connects on the first write, so a broker that is down at start
    costs retries, not the server's start."""

    name = "nats"

    def __init__(
        self,
        url: str,
        subject: str,
        *,
        stream: str = STREAM,
        duplicate_window_s: float = DUPLICATE_WINDOW_S,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        require("nats", extra="nats", purpose="the NATS prediction sink")
        self.url = url
        self.subject = subject
        self.stream = stream
        self.duplicate_window_s = duplicate_window_s
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stalwart-nats-sink", daemon=True)
        self._thread.start()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsSink:
        """The sink at ``STALWART_NATS_URL`` on ``STALWART_NATS_SUBJECT``."""
        if not settings.nats_url:
            raise ConfigError("STALWART_PREDICTION_LOG=nats needs STALWART_NATS_URL, e.g. nats://127.0.0.1:4222")
        return cls(settings.nats_url, settings.nats_subject)

    def write(self, records: Sequence[PredictionRecord], encoded: Sequence[bytes]) -> None:
        """Publish every record and wait for every ack; JetStream drops duplicates by request
        id. Raises SinkUnavailable when any publish is not acknowledged in time."""
        if self._closed:
            raise SinkUnavailable("the NATS prediction sink is closed; open a new one")
        if records:
            self._run(self._publish(records, encoded), self.timeout_s + self.connect_timeout_s + 5)

    def pending(self) -> int:
        """Always 0: a write returns only once JetStream has acknowledged every record."""
        return 0

    def close(self) -> None:
        """Drain the connection (awaiting what is in flight), then stop the loop."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._nc is not None:
                self._run(self._drain(), self.timeout_s + 5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()

    # -- on the sink's loop --------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        nats_errors = require("nats.errors", extra="nats", purpose="the NATS prediction sink")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError as exc:  # concurrent.futures' timeout is the builtin since 3.11
            future.cancel()
            raise SinkUnavailable(f"NATS at {self.url} did not answer within {timeout:g} s; records stay spooled and are retried") from exc
        except (nats_errors.Error, OSError) as exc:
            # nats.errors.Error is the root of nats-py's errors (JetStream's included):
            # no responders, timeouts, closed or reconnecting connections, API errors.
            raise SinkUnavailable(
                f"NATS JetStream at {self.url} did not store the batch ({type(exc).__name__}: {exc}); "
                f"check the server runs with JetStream and stream {self.stream} takes subject {self.subject}"
            ) from exc

    async def _connect(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        client = require("nats.aio.client", extra="nats", purpose="the NATS prediction sink")
        js_errors = require("nats.js.errors", extra="nats", purpose="the NATS prediction sink")
        nc: Client = client.Client()
        # Reconnect forever once connected: an outage then shows as publish timeouts, which
        # the log retries. nats-py applies that to the first connection too (it would retry
        # forever), so the first connection gets its own deadline, and a write says at once
        # that the server is unreachable.
        connecting = nc.connect(
            self.url, connect_timeout=max(1, round(self.connect_timeout_s)), max_reconnect_attempts=-1,
            reconnect_time_wait=1, allow_reconnect=True, name="stalwart-prediction-log",
            error_cb=_ignore, disconnected_cb=_nothing, reconnected_cb=_nothing, closed_cb=_nothing,
        )  # fmt: skip
        try:
            await asyncio.wait_for(connecting, self.connect_timeout_s)
        except TimeoutError as exc:
            await nc.close()
            raise SinkUnavailable(f"cannot connect to NATS at {self.url} within {self.connect_timeout_s:g} s; check the server runs (records stay spooled and are retried)") from exc
        js = nc.jetstream(timeout=self.timeout_s)
        try:
            await js.stream_info(self.stream)
        except js_errors.NotFoundError:
            await js.add_stream(name=self.stream, subjects=[self.subject], duplicate_window=self.duplicate_window_s)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js
        return js

    async def _publish(self, records: Sequence[PredictionRecord], encoded: Sequence[bytes]) -> None:
        js = await self._connect()
        publishes = [
            js.publish(self.subject, payload, timeout=self.timeout_s, stream=self.stream, headers={"Nats-Msg-Id": record.request_id})
            for record, payload in zip(records, encoded, strict=True)
        ]
        # gather raises the first failure; return_exceptions lets every publish finish (or
        # time out) first, so none is left running against the next batch.
        results = await asyncio.gather(*publishes, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _drain(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()


async def _ignore(exc: Exception) -> None:
    """nats-py logs connection errors through this callback; the sink reports them itself,
    as SinkUnavailable on the write that meets them."""


async def _nothing() -> None:
    """A connection event the sink needs no action for (nats-py reconnects on its own)."""
