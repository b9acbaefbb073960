"""Labels for logged predictions: checked, matched to the prediction log, stored.

A label (``POST /v1/feedback``, or :func:`store_feedback` from a script) names the
prediction it is for in one of two ways:

- by **request id** (the ``request_id`` a predict answer carried) and, for a request that
  scored several entities, the ``row`` (0 by default);
- by **deployment, entity key and time**: the label is for that entity's prediction by that
  deployment nearest in time to ``time``, at most ``match_seconds`` away
  (``STALWART_FEEDBACK_MATCH_SECONDS``, 300 s). Keys compare as JSON values (``7`` and
  ``7.0`` differ; ``{"card_id": 7}`` is the same key whatever its field order).

A label is a number, a string or a boolean. Labels are **idempotent**: the same request id
and row (or the same deployment, entity and time) labelled again keeps the latest label
only. A label whose prediction is not in the log yet is stored all the same (the log
writes records shortly after their answer); the quality join (:mod:`.quality`) matches it
when it reads. Matching needs the prediction log in the database (``STALWART_PREDICTION_LOG``
``auto`` or ``sql``).

>>> check_items([{"request_id": "r1", "label": 1}], max_items=10)[0].key
'r:r1:0'
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from stalwart.durations import NS
from stalwart.errors import InvalidFeedback
from stalwart.hashing import canonical_json
from stalwart.storage import Database
from stalwart.storage.tables import feedback, predictions

__all__ = [
    "MATCH_SCAN_LIMIT",
    "FeedbackItem",
    "FeedbackResult",
    "Label",
    "LoggedPrediction",
    "Matcher",
    "check_items",
    "decode_logged",
    "entity_key",
    "store_feedback",
]

Label = bool | int | float | str
"""What a label may be: a class (string, integer, boolean) or a regression target."""

MATCH_SCAN_LIMIT = 200_000
"""Logged predictions read, at most, to match one batch's entity labels when they are
stored: a batch of labels spread over months cannot make the server read the whole log.
Labels past it are stored unmatched and matched when quality is read."""

_MAX_TEXT = 256  # characters of a request id or a string label
_MAX_KEY_FIELDS = 32
_INT64 = 2**63
_ROW_LIMIT = 2**31
_ITEM_FIELDS = frozenset({"request_id", "row", "deployment", "entity", "time", "label"})
_DEPLOYMENT = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """One label, checked. Either ``request_id`` (and ``row``) or ``deployment``, ``entity``
    and ``time_ns`` say which prediction it is for."""

    label: Label
    request_id: str | None = None
    row: int = 0
    deployment: str | None = None
    entity: dict[str, Any] | None = None
    time_ns: int | None = None

    @property
    def key(self) -> str:
        """What makes a label idempotent: a label stored again under the same key
        replaces the earlier one."""
        if self.request_id is not None:
            return f"r:{self.request_id}:{self.row}"
        return f"e:{self.deployment}:{entity_key(self.entity or {})}:{self.time_ns}"


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What became of a batch: every label is stored (``accepted``); ``matched`` of them
    were joined to a logged prediction as they were stored (the rest are joined on read,
    once their prediction is in the log)."""

    accepted: int
    matched: int

    def as_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "matched": self.matched, "unmatched": self.accepted - self.matched}


class LoggedPrediction(msgspec.Struct, kw_only=True):
    """The fields of a stored prediction record that the joins read (a record's other
    fields, features included, are skipped while decoding)."""

    request_id: str
    time_ns: int
    status: int = 200
    deployment: str | None = None
    variant: str | None = None
    model: str | None = None
    version: int | None = None
    rows: int | None = None
    entities: list[dict[str, Any]] | None = None
    outputs: dict[str, Any] | None = None


_logged_decoder = msgspec.json.Decoder(LoggedPrediction)


def decode_logged(text: str | bytes) -> LoggedPrediction:
    """A stored record's JSON as a :class:`LoggedPrediction`."""
    return _logged_decoder.decode(text)


def entity_key(entity: Mapping[str, Any]) -> str:
    """An entity key as canonical JSON text: equal keys, equal text."""
    return canonical_json(dict(entity)).decode()


def check_items(items: Sequence[Any], *, deployment: str | None = None, max_items: int) -> list[FeedbackItem]:
    """Raw label items (decoded JSON) as checked :class:`FeedbackItem` s; ``deployment``
    is the batch's default for items that name none.

    Raises :class:`~stalwart.errors.InvalidFeedback` naming the first bad item and field
    (``items[3].label``); more than ``max_items`` items is refused before any is read.
    """
    if len(items) > max_items:
        raise InvalidFeedback(
            f"items: {len(items)} labels in one batch, over the limit of {max_items}; send them "
            f"in batches of at most {max_items} (STALWART_FEEDBACK_MAX_ITEMS)",
            field="items",
        )
    if deployment is not None:
        _deployment(deployment, "deployment")
    return [_item(raw, f"items[{index}]", deployment) for index, raw in enumerate(items)]


def store_feedback(
    db: Database,
    items: Sequence[FeedbackItem],
    *,
    actor: str | None = None,
    match_seconds: float = 300.0,
    now_ns: int | None = None,
    within: Callable[[Connection, FeedbackResult], None] | None = None,
) -> FeedbackResult:
    """Store ``items`` in one transaction and say how many matched a logged prediction.

    Matches are looked up first (reads only, so the write transaction is short): request
    ids in the prediction log, then entity labels against that deployment's predictions
    within ``match_seconds`` (at most :data:`MATCH_SCAN_LIMIT` records read per batch).
    A request id that is logged with fewer rows than an item's ``row`` is refused
    (InvalidFeedback naming the item). Within one batch, a later label for the same
    prediction wins over an earlier one, as it would across batches.
    """
    received = time.time_ns() if now_ns is None else now_ns
    match_ns = round(match_seconds * NS)
    with db.read() as conn:
        logged = _logged_requests(conn, {item.request_id for item in items if item.request_id is not None})
        matcher = Matcher.scan(conn, [item for item in items if item.request_id is None], match_ns)
    rows: dict[str, dict[str, Any]] = {}
    matched: set[str] = set()
    for index, item in enumerate(items):
        request_id, row, deployment = item.request_id, item.row, item.deployment
        if request_id is not None:
            found = logged.get(request_id)
            if found is not None:
                logged_deployment, logged_rows = found
                if row >= logged_rows:
                    raise InvalidFeedback(
                        f"items[{index}].row: request '{request_id}' scored {logged_rows} "
                        f"row{'s' if logged_rows != 1 else ''}; give a row from 0 to {logged_rows - 1}",
                        field=f"items[{index}].row",
                    )
                deployment = logged_deployment or deployment
        else:
            hit = matcher.nearest(item.deployment or "", entity_key(item.entity or {}), item.time_ns or 0, match_ns)
            if hit is not None:
                request_id, row = hit
        key = item.key
        rows.pop(key, None)  # re-inserted last: the later label wins
        rows[key] = {
            "key": key,
            "deployment": deployment,
            "request_id": request_id,
            "row_index": row if request_id is not None else None,
            "entity_key": entity_key(item.entity) if item.entity is not None else None,
            "event_time_ns": item.time_ns,
            "label": item.label,
            "received_at_ns": received,
            "actor": actor,
        }
        if request_id is not None and (item.request_id is None or request_id in logged):
            matched.add(key)
        else:
            matched.discard(key)
    result = FeedbackResult(accepted=len(items), matched=sum(1 for item in items if item.key in matched))

    def write(conn: Connection) -> None:
        if rows:
            _upsert(conn, list(rows.values()))
        if within is not None:
            within(conn, result)

    db.transact(write)
    return result


class Matcher:
    """Logged prediction rows by deployment and entity key, sorted by time: finds the
    prediction an entity label is for (the nearest in time within a bound)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
        self._sorted = True

    def add(self, record: LoggedPrediction) -> None:
        """Index every row of ``record`` under its deployment and entity key."""
        for row, entity in enumerate(record.entities or ()):
            self._rows.setdefault((record.deployment or "", entity_key(entity)), []).append((record.time_ns, record.request_id, row))
        self._sorted = False

    def nearest(self, deployment: str, key: str, time_ns: int, within_ns: int) -> tuple[str, int] | None:
        """``(request id, row)`` of the entity's prediction nearest to ``time_ns`` (the
        earlier one on a tie), or None when none is within ``within_ns``."""
        if not self._sorted:
            for indexed in self._rows.values():
                indexed.sort()
            self._sorted = True
        rows = self._rows.get((deployment, key))
        if not rows:
            return None
        at = bisect.bisect_left(rows, (time_ns, "", -1))
        best: tuple[int, str, int] | None = None
        for candidate in rows[max(at - 1, 0) : at + 1]:
            distance = abs(candidate[0] - time_ns)
            if distance <= within_ns and (best is None or distance < abs(best[0] - time_ns)):
                best = candidate
        return None if best is None else (best[1], best[2])

    @classmethod
    def scan(cls, conn: Connection, items: Iterable[FeedbackItem], within_ns: int, *, limit: int = MATCH_SCAN_LIMIT) -> Matcher:
        """A matcher over the predictions the entity labels ``items`` may be for: per
        deployment, the records within ``within_ns`` of a label's time (overlapping spans
        merged into one read), at most ``limit`` records in all."""
        matcher = cls()
        spans: dict[str, list[tuple[int, int]]] = {}
        for item in items:
            if item.time_ns is not None and item.deployment is not None:
                spans.setdefault(item.deployment, []).append((item.time_ns - within_ns, item.time_ns + within_ns))
        budget = limit
        for deployment_name, wanted in spans.items():
            for start, end in _merged(wanted):
                if budget <= 0:
                    return matcher
                statement = (
                    select(predictions.c.record)
                    .where(
                        predictions.c.deployment == deployment_name,
                        predictions.c.time_ns >= start,
                        predictions.c.time_ns <= end,
                        predictions.c.status < 400,
                    )
                    .order_by(predictions.c.time_ns)
                    .limit(budget)
                )
                texts = list(conn.execute(statement).scalars())
                budget -= len(texts)
                for text in texts:
                    matcher.add(decode_logged(text))
        return matcher


# -- checking one item ------------------------------------------------------------------


def _item(raw: Any, where: str, default_deployment: str | None) -> FeedbackItem:
    if not isinstance(raw, dict):
        raise InvalidFeedback(f"{where}: a label item is an object, like {{\"request_id\": \"...\", \"label\": 1}}", field=where)
    unknown = sorted(set(raw) - _ITEM_FIELDS)
    if unknown:
        field = f"{where}.{_clip(unknown[0])}"
        raise InvalidFeedback(f"{field}: not a field of a label item; it takes {', '.join(sorted(_ITEM_FIELDS))}", field=field)
    if "label" not in raw:
        raise InvalidFeedback(f"{where}.label: missing; give the observed outcome (a number, string or boolean)", field=f"{where}.label")
    label = _label(raw["label"], f"{where}.label")
    request_id = raw.get("request_id")
    entity = raw.get("entity")
    if request_id is not None:
        if entity is not None or raw.get("time") is not None:
            raise InvalidFeedback(
                f"{where}: give request_id, or entity and time, not both", field=f"{where}.entity" if entity is not None else f"{where}.time"
            )
        if not isinstance(request_id, str) or not 0 < len(request_id) <= _MAX_TEXT:
            raise InvalidFeedback(f"{where}.request_id: a request id is a string of 1 to {_MAX_TEXT} characters", field=f"{where}.request_id")
        row = raw.get("row", 0)
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < _ROW_LIMIT:
            raise InvalidFeedback(f"{where}.row: the row of the request this label is for, an integer from 0", field=f"{where}.row")
        deployment = raw.get("deployment", default_deployment)
        if deployment is not None:
            _deployment(deployment, f"{where}.deployment")
        return FeedbackItem(label=label, request_id=request_id, row=row, deployment=deployment)
    if "row" in raw:
        raise InvalidFeedback(f"{where}.row: a row goes with a request_id; an entity label names its prediction by entity and time", field=f"{where}.row")
    if entity is None:
        raise InvalidFeedback(
            f"{where}.request_id: say which prediction this label is for: request_id, or deployment, entity and time",
            field=f"{where}.request_id",
        )
    deployment = raw.get("deployment", default_deployment)
    if deployment is None:
        raise InvalidFeedback(f"{where}.deployment: an entity label needs its deployment (here or for the whole batch)", field=f"{where}.deployment")
    _deployment(deployment, f"{where}.deployment")
    return FeedbackItem(label=label, deployment=deployment, entity=_entity(entity, f"{where}.entity"), time_ns=_time(raw.get("time"), f"{where}.time"))


def _label(value: Any, field: str) -> Label:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise InvalidFeedback(f"{field}: {_clip(str(value))} is outside int64", field=field)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidFeedback(f"{field}: a label must be a finite number", field=field)
        return value
    if isinstance(value, str):
        if not 0 < len(value) <= _MAX_TEXT:
            raise InvalidFeedback(f"{field}: a string label has 1 to {_MAX_TEXT} characters", field=field)
        return value
    raise InvalidFeedback(f"{field}: a label is a number, a string or a boolean, not {_kind(value)}", field=field)


def _entity(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise InvalidFeedback(f"{field}: an entity key is an object of key fields, like {{\"card_id\": 7}}", field=field)
    if len(value) > _MAX_KEY_FIELDS:
        raise InvalidFeedback(f"{field}: at most {_MAX_KEY_FIELDS} key fields", field=field)
    for name, part in value.items():
        where = f"{field}.{_clip(name)}"
        if len(name) > _MAX_TEXT:
            raise InvalidFeedback(f"{where}: a key field's name has at most {_MAX_TEXT} characters", field=where)
        if isinstance(part, bool) or part is None or isinstance(part, dict | list):
            raise InvalidFeedback(f"{where}: a key value is a string or a number, not {_kind(part)}", field=where)
        if isinstance(part, int) and not -_INT64 <= part < _INT64:
            raise InvalidFeedback(f"{where}: {_clip(str(part))} is outside int64", field=where)
        if isinstance(part, float) and not math.isfinite(part):
            raise InvalidFeedback(f"{where}: a key must be a finite number", field=where)
        if isinstance(part, str) and len(part) > _MAX_TEXT:
            raise InvalidFeedback(f"{where}: a key value has at most {_MAX_TEXT} characters", field=where)
    return dict(value)


def _time(value: Any, field: str) -> int:
    hint = "nanoseconds since the epoch (an integer) or an ISO 8601 time with its UTC offset ('2024-05-01T12:00:00Z')"
    if isinstance(value, bool) or value is None:
        raise InvalidFeedback(f"{field}: when the predicted event happened: {hint}", field=field)
    if isinstance(value, int):
        if not 0 <= value < _INT64:
            raise InvalidFeedback(f"{field}: {_clip(str(value))} is not a time; give {hint}", field=field)
        return value
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidFeedback(f"{field}: {_clip(value)!r} is not a time; give {hint}", field=field) from None
        if parsed.tzinfo is None:
            raise InvalidFeedback(f"{field}: {_clip(value)!r} has no UTC offset; add one ('Z' for UTC)", field=field)
        delta = parsed - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        ns = (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1_000
        if ns < 0:
            raise InvalidFeedback(f"{field}: {_clip(value)!r} is before 1970", field=field)
        return ns
    raise InvalidFeedback(f"{field}: {hint}", field=field)


def _deployment(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _DEPLOYMENT.match(value):
        raise InvalidFeedback(f"{field}: a deployment name (letters, digits, '-' and '_')", field=field)
    return value


def _kind(value: Any) -> str:
    return {type(None): "null", dict: "an object", list: "an array", bool: "a boolean"}.get(type(value), type(value).__name__)


def _clip(text: str) -> str:
    return text if len(text) <= 64 else f"{text[:64]}..."


# -- storage ----------------------------------------------------------------------------


def _logged_requests(conn: Connection, request_ids: set[str]) -> dict[str, tuple[str | None, int]]:
    """request id -> (deployment, rows) of those in the prediction log."""
    found: dict[str, tuple[str | None, int]] = {}
    ids = sorted(request_ids)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        statement = select(predictions.c.request_id, predictions.c.deployment, predictions.c.record).where(predictions.c.request_id.in_(chunk))
        for request_id, deployment, text in conn.execute(statement):
            record = decode_logged(text)
            found[str(request_id)] = (deployment, record.rows if record.rows is not None else 1)
    return found


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(feedback)
    replace = {name: statement.excluded[name] for name in ("deployment", "request_id", "row_index", "label", "received_at_ns", "actor")}
    conn.execute(statement.on_conflict_do_update(index_elements=["key"], set_=replace), rows)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
