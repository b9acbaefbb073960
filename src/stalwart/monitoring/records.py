"""The prediction record: one per request, whatever became of it, and its hash chain.

A :class:`PredictionRecord` says who asked (request and trace ids, entrypoint, deployment,
variant), what was served (model version, entity keys, the features as the model saw them
with the FeatureSet versions that computed them and the instant they were as of, the inputs
or their hash, the outputs), and how (status, error class, validation report,
degradation, feature-cache hits, milliseconds per stage). Records are msgspec Structs:
encoded once, as JSON, on the prediction log's writer thread, never on the event loop.

Records are **hash-chained**: the writer that stores them gives each one its chain (the
writer's id), its position ``seq`` in that chain, the previous record's hash and its own,
``sha256(prev_hash + canonical bytes of the record without its hash)``. Changing, removing
or reordering a stored record breaks the chain at that record, which :func:`verify_chain`
finds and names.

>>> record = PredictionRecord(request_id="r1", time_ns=0, entrypoint="/v2", status=200, latency_ms=1.5)
>>> chain = Chain("replica-a")
>>> chain.link(record).seq
0
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

__all__ = [
    "GENESIS",
    "Break",
    "Chain",
    "PredictionRecord",
    "Redaction",
    "decode_record",
    "encode_record",
    "record_hash",
    "verify_chain",
]

GENESIS = "0" * 64  # the "previous hash" of a chain's first record


class PredictionRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One request as the prediction log keeps it (see the module docstring)."""

    request_id: str
    time_ns: int  # when the request arrived, ns since the epoch (UTC)
    entrypoint: str  # "/v2" or "/v1"
    status: int  # the HTTP status it was answered with
    latency_ms: float
    trace_id: str | None = None
    deployment: str | None = None
    variant: str | None = None
    model: str | None = None
    version: int | None = None
    error: str | None = None  # the error's class, when it failed
    rows: int | None = None
    entities: list[dict[str, Any]] | None = None
    features: dict[str, Any] | None = None  # name -> values per row, as the model saw them
    feature_sets: dict[str, str] | None = None  # /v1: FeatureSet name -> the version that served it
    features_as_of_ns: int | None = None  # /v1: the instant the features were computed as of
    inputs: dict[str, Any] | None = None  # name -> values (or a summary of a large tensor)
    inputs_hash: str | None = None  # when inputs are logged as a hash only
    outputs: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    degraded: str | None = None  # the ladder's level, when degraded
    degraded_reason: str | None = None
    cache: dict[str, Any] | None = None  # per feature set: where values came from
    timings: dict[str, float] | None = None  # ms per stage
    # Accountability: set by the writer that stores the record.
    chain: str | None = None
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PredictionRecord)


def encode_record(record: PredictionRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes | str) -> PredictionRecord:
    return _decoder.decode(data)


def record_hash(record: PredictionRecord, prev_hash: str) -> str:
    """The record's hash given the previous one: over its canonical JSON without ``hash``
    (msgspec encodes a Struct's fields in declaration order, floats in shortest round-trip
    form, so the bytes are the same on every machine and after a round trip)."""
    unhashed = msgspec.structs.replace(record, hash=None)
    return hashlib.sha256(prev_hash.encode() + _encoder.encode(unhashed)).hexdigest()


class Chain:
    """Links records into one hash chain (a writer's own: one thread appends to it)."""

    def __init__(self, name: str, *, seq: int = 0, prev_hash: str = GENESIS) -> None:
        self.name = name
        self.seq = seq  # the next record's position
        self.prev_hash = prev_hash

    def link(self, record: PredictionRecord) -> PredictionRecord:
        """The record with its place in this chain (a new struct; the input is unchanged).

        The record is first put in its stored form (encoded and decoded once), so what is
        hashed is exactly what a verifier reads back: an int in a float field, say, is a
        float in both."""
        linked = _decoder.decode(
            _encoder.encode(msgspec.structs.replace(record, chain=self.name, seq=self.seq, prev_hash=self.prev_hash, hash=None))
        )
        digest = record_hash(linked, self.prev_hash)
        linked.hash = digest
        self.seq += 1
        self.prev_hash = digest
        return linked


    def link_encoded(self, record: PredictionRecord) -> bytes:
        """The record's stored bytes with its place in this chain: what
        ``encode_record(self.link(record))`` gives, encoded once instead of three times.

        The hash covers the JSON without ``hash``; ``hash`` is the last field, so the stored
        form is that JSON with ``"hash"`` appended. Encoding is canonical on a round trip
        (a verifier decodes and re-encodes the same bytes) for every field but the typed
        floats, where an int would come back as a float: those go through :meth:`link`.
        """
        timings = record.timings
        if type(record.latency_ms) is not float or (timings and any(type(v) is not float for v in timings.values())):
            return _encoder.encode(self.link(record))
        unhashed = _encoder.encode(
            msgspec.structs.replace(record, chain=self.name, seq=self.seq, prev_hash=self.prev_hash, hash=None)
        )
        digest = hashlib.sha256(self.prev_hash.encode() + unhashed).hexdigest()
        self.seq += 1
        self.prev_hash = digest
        return unhashed[:-1] + b',"hash":"' + digest.encode() + b'"}'


@dataclass(frozen=True, slots=True)
class Break:
    """Where a chain stops being intact, and how."""

    chain: str
    seq: int  # the position where the chain breaks
    request_id: str | None
    problem: Literal["changed", "removed", "reordered", "unlinked"]

    def describe(self) -> str:
        what = {
            "changed": "was changed after it was written (its hash does not match its content)",
            "removed": "is missing: the record before it in the chain was removed",
            "reordered": "is out of order (its position does not follow the previous record's)",
            "unlinked": "does not link to the record before it (a record was removed or replaced)",
        }[self.problem]
        who = f"request {self.request_id}" if self.request_id else "a record"
        return f"chain {self.chain}, position {self.seq}: {who} {what}"


def verify_chain(records: Iterable[PredictionRecord]) -> Break | None:
    """The first break in one chain's records, given in storage order; None when intact.

    A record whose stored hash does not match its content was changed; a position that
    skips ahead means records were removed; one that goes back means reordering; a record
    whose ``prev_hash`` is not the previous record's hash was put in from elsewhere.
    """
    expected_seq: int | None = None
    prev = GENESIS
    for record in records:
        name = record.chain or ""
        seq = record.seq if record.seq is not None else -1
        if record.hash is None or record_hash(record, record.prev_hash or "") != record.hash:
            return Break(name, seq, record.request_id, "changed")
        if expected_seq is None:
            expected_seq = seq
            prev = record.prev_hash or GENESIS
            if seq == 0 and prev != GENESIS:
                return Break(name, seq, record.request_id, "unlinked")
        if seq > expected_seq:
            return Break(name, expected_seq, record.request_id, "removed")
        if seq < expected_seq:
            return Break(name, seq, record.request_id, "reordered")
        if record.prev_hash != prev:
            return Break(name, seq, record.request_id, "unlinked")
        prev = record.hash
        expected_seq = seq + 1
    return None


class Redaction:
    """Fields declared sensitive, dropped or replaced by a keyed hash before a record is
    stored anywhere (the queue's converter applies it, so no sink ever sees the value).

    ``fields`` maps a feature, input, entity key or request value name to ``"drop"`` or
    ``"hash"`` (HMAC-SHA256 with ``key``, so equal values stay joinable without being
    readable, and nobody without the key can test a guess).
    """

    def __init__(self, fields: Mapping[str, Literal["drop", "hash"]], key: bytes) -> None:
        self.fields = dict(fields)
        self._key = key

    def __bool__(self) -> bool:
        return bool(self.fields)

    def apply(self, record: PredictionRecord) -> None:
        """Redact ``record`` in place: its entities, features, inputs and outputs, and the
        values quoted in its validation report."""
        for part in (record.features, record.inputs, record.outputs):
            if part:
                self._mapping(part)
        if record.entities:
            for entity in record.entities:
                self._mapping(entity)
        details = (record.validation or {}).get("details")
        if isinstance(details, list):
            for detail in details:
                how = self.fields.get(str(detail.get("feature"))) if isinstance(detail, dict) else None
                if how == "drop":
                    detail.pop("value", None)
                elif how == "hash" and "value" in detail:
                    detail["value"] = self._hash(detail["value"])

    def _mapping(self, values: dict[str, Any]) -> None:
        for name, how in self.fields.items():
            if name not in values:
                continue
            if how == "drop":
                del values[name]
            else:
                values[name] = self._hash(values[name])

    def _hash(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._hash(v) for v in value]
        digest = hmac.new(self._key, _encoder.encode(value), hashlib.sha256).hexdigest()
        return f"hmac:{digest[:32]}"
