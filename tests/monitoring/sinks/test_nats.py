"""The NATS JetStream prediction sink, against the real server: acknowledged batches are
consumed back exactly once, retries make no duplicates, an unreachable server is
SinkUnavailable."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import nats
import pytest

from stalwart.config import Settings
from stalwart.errors import ConfigError, SinkUnavailable
from stalwart.monitoring.records import Chain, PredictionRecord, decode_record, encode_record
from stalwart.monitoring.sinks import open_sink, open_store
from stalwart.monitoring.sinks.nats import NatsSink
from tests.servers import free_port

pytestmark = pytest.mark.nats

NATS_URL = os.environ.get("STALWART_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
def stream() -> Iterator[tuple[str, str]]:
    """A stream and subject of this test's own, deleted afterwards."""
    name = f"TEST_{uuid.uuid4().hex[:12].upper()}"
    yield name, f"test.predictions.{name.lower()}"

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(delete())


def consume(stream: str) -> list[tuple[str | None, PredictionRecord]]:
    """Every message in the stream, through a pull consumer: (Nats-Msg-Id, record)."""

    async def run() -> list[tuple[str | None, PredictionRecord]]:
        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            subscription = await js.pull_subscribe("", durable=None, stream=stream)
            found: list[tuple[str | None, PredictionRecord]] = []
            while len(found) < info.state.messages:
                for msg in await subscription.fetch(500, timeout=5):
                    await msg.ack()
                    found.append(((msg.headers or {}).get("Nats-Msg-Id"), decode_record(msg.data)))
            return found
        finally:
            await nc.close()

    return asyncio.run(run())


def batch(chain: Chain, n: int, start: int = 0) -> tuple[list[PredictionRecord], list[bytes]]:
    records = [
        chain.link(PredictionRecord(request_id=f"{uuid.uuid4().hex}", time_ns=1_700_000_000_000_000_000 + i, entrypoint="/v1", status=200, latency_ms=2.5, features={"x": [i]}))
        for i in range(start, start + n)
    ]
    return records, [encode_record(r) for r in records]


def test_a_published_batch_is_consumed_back_exactly_once(stream: tuple[str, str]) -> None:
    """Every acknowledged record is in the stream once, as written, its id the request id."""
    name, subject = stream
    sink = NatsSink(NATS_URL, subject, stream=name)
    records, encoded = batch(Chain("a"), 300)
    try:
        sink.write(records, encoded)
        assert sink.pending() == 0
    finally:
        sink.close()
    consumed = consume(name)
    assert [record for _, record in consumed] == records
    assert [msg_id for msg_id, _ in consumed] == [r.request_id for r in records]


def test_a_retried_batch_makes_no_duplicates(stream: tuple[str, str]) -> None:
    """A batch sent again (after a timeout, or replayed from the spool by a new sink) is
    dropped by JetStream's duplicate window."""
    name, subject = stream
    chain = Chain("a")
    first, first_encoded = batch(chain, 100)
    second, second_encoded = batch(chain, 50, start=100)
    sink = NatsSink(NATS_URL, subject, stream=name)
    try:
        sink.write(first, first_encoded)
        sink.write(first[50:] + second, first_encoded[50:] + second_encoded)
    finally:
        sink.close()
    replay = NatsSink(NATS_URL, subject, stream=name)
    try:
        replay.write(first + second, first_encoded + second_encoded)
    finally:
        replay.close()
    ids = [msg_id for msg_id, _ in consume(name)]
    assert ids == [r.request_id for r in first + second]


def test_an_unreachable_server_is_sink_unavailable() -> None:
    """Nothing listening: the write fails fast with SinkUnavailable, naming the server."""
    url = f"nats://127.0.0.1:{free_port()}"
    sink = NatsSink(url, "test.predictions.none", connect_timeout_s=0.5)
    records, encoded = batch(Chain("a"), 3)
    try:
        with pytest.raises(SinkUnavailable, match=url):
            sink.write(records, encoded)
    finally:
        sink.close()
    with pytest.raises(SinkUnavailable, match="closed"):
        sink.write(records, encoded)


def test_a_subject_no_stream_takes_is_sink_unavailable(stream: tuple[str, str]) -> None:
    """A stream that exists without the sink's subject: no responders, SinkUnavailable."""
    name, subject = stream
    owner = NatsSink(NATS_URL, subject, stream=name)
    records, encoded = batch(Chain("a"), 2)
    try:
        owner.write(records, encoded)
    finally:
        owner.close()
    stray = NatsSink(NATS_URL, f"{subject}.elsewhere", stream=name, timeout_s=1)
    try:
        with pytest.raises(SinkUnavailable, match=name):
            stray.write(records, encoded)
    finally:
        stray.close()


def test_open_sink_by_settings() -> None:
    """STALWART_PREDICTION_LOG=nats opens the NATS sink; it has no readable store."""
    settings = Settings(prediction_log="nats", nats_url=NATS_URL, nats_subject="test.predictions.settings")
    sink = open_sink(settings)
    assert isinstance(sink, NatsSink)
    assert sink.subject == "test.predictions.settings"
    sink.close()
    assert open_store(settings) is None
    with pytest.raises(ConfigError, match="STALWART_NATS_URL"):
        NatsSink.from_settings(Settings(prediction_log="nats"))
