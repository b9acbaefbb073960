"""Where prediction records go: one backend per module behind :class:`PredictionSink`.

- ``sql``: SQLite (the embedded default, the registry's own database under
  ``STALWART_HOME``) and PostgreSQL (batched with ``COPY``, shared by every replica);
- ``parquet``: rotated Parquet segments (by size and hour, zstd) that pandas, DuckDB and
  Spark read directly;
- ``nats``: NATS JetStream, acknowledged publishes only, for other consumers.

A sink is written from one thread, the prediction log's writer, in batches, and must be
idempotent by request id: the log replays its spool after a crash or an outage, so a
record may arrive twice and must be stored once. A sink that cannot store a batch raises
:class:`~stalwart.errors.SinkUnavailable`; the log keeps the batch and tries again later.

A sink that can also be read (SQL, Parquet) is a :class:`PredictionStore`: ``stalwart log``,
``GET /v1/predictions/{id}``, ``stalwart audit verify`` and retention use it.
"""

from __future__ import annotations

from stalwart.config import Settings
from stalwart.monitoring.sinks.base import PredictionSink, PredictionStore, Query

__all__ = ["PredictionSink", "PredictionStore", "Query", "open_sink", "open_store"]


def open_sink(settings: Settings) -> PredictionSink | None:
    """The sink ``STALWART_PREDICTION_LOG`` names (None for ``off``), backends imported
    only when chosen: ``auto``/``sql`` the registry's database, ``parquet`` segments under
    ``STALWART_PREDICTION_LOG_DIR``, ``nats`` JetStream at ``STALWART_NATS_URL``."""
    kind = settings.prediction_log
    if kind == "off":
        return None
    if kind in ("auto", "sql"):
        from stalwart.monitoring.sinks.sql import SqlSink

        return SqlSink.from_settings(settings)
    if kind == "parquet":
        from stalwart.monitoring.sinks.parquet import ParquetSink

        return ParquetSink.from_settings(settings)
    from stalwart.monitoring.sinks.nats import NatsSink

    return NatsSink.from_settings(settings)


def open_store(settings: Settings) -> PredictionStore | None:
    """The readable store of the configured log (None when it has none: ``off``, ``nats``)."""
    if settings.prediction_log in ("off", "nats"):
        return None
    sink = open_sink(settings)
    return sink if isinstance(sink, PredictionStore) else None
