"""The prediction sink and store protocols and the query they read by (see the package's
docstring for the contract every backend keeps)."""


from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from stalwart.monitoring.records import PredictionRecord

__all__ = ["PredictionSink", "PredictionStore", "Query"]


class PredictionSink(Protocol):
    """Stores batches of prediction records, idempotently by request id.

    **Durability (optional methods, looked up with ``getattr``).** A sink that holds
    accepted records before they are durable has ``pending() -> int``: the last
    ``pending()`` records given to ``write`` (in the order given, duplicates included) are
    not yet durable, and every record given before them is. The writer forgets a spooled
    record only once it is durable: after a ``write`` returns, the records it sent before
    the last ``pending()`` ones. A sink without ``pending`` is durable when ``write``
    returns (as if it returned 0: SQL, NATS). Such a sink also has ``flush() -> None``,
    which makes every accepted record durable (``pending()`` becomes 0) or raises
    SinkUnavailable; the writer calls it at shutdown and whenever it has had nothing to
    write for a while, at least once a minute (the Parquet sink also closes a segment
    older than 60 s itself, but only on a ``write``). A sink that raises SinkUnavailable
    keeps what it had accepted, so the writer retries the same batch.
    """

    name: str

    def write(self, records: Sequence[PredictionRecord], encoded: Sequence[bytes]) -> None:
        """Store ``records`` (``encoded``: each one's JSON, from
        :func:`~stalwart.monitoring.records.encode_record`), once each however often the
        same request id arrives. Raises SinkUnavailable when it cannot."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Query:
    """Which records to read: every filter given must hold. Times are ns since the epoch."""

    deployment: str | None = None
    model: str | None = None
    version: int | None = None
    variant: str | None = None  # the variant that answered (primary, canary, fallback)
    status: int | None = None  # an exact status, e.g. 422
    errors_only: bool = False  # status >= 400
    degraded: bool | None = None  # True: only degraded answers; False: only undegraded
    since_ns: int | None = None
    until_ns: int | None = None
    limit: int = 100  # newest first


@runtime_checkable
class PredictionStore(Protocol):
    """A sink that can be read back."""

    def get(self, request_id: str) -> PredictionRecord | None: ...

    def query(self, query: Query) -> list[PredictionRecord]:
        """Matching records, newest first, at most ``query.limit``."""
        ...

    def chains(self) -> list[str]:
        """The names of the hash chains stored (one per writer that ever wrote here)."""
        ...

    def chain(self, name: str) -> Iterator[PredictionRecord]:
        """One chain's records in storage order (by position), for verification."""
        ...

    def delete_older(self, cutoff_ns: int) -> int:
        """Retention: remove records older than ``cutoff_ns``; returns how many."""
        ...

    def close(self) -> None:
        """Release connections and files (a reader opened for one command closes it)."""
        ...
