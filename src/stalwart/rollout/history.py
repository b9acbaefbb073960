"""A rollout's history as its report reads it: the rollout's row and its events, as the
rollout store hands them over, checked once into plain Structs.

:meth:`RolloutHistory.from_rows` takes the row (``id``, ``deployment``, ``canary``,
``primary``, ``salt``, ``plan``, ``state``, ``step``, ``weight``, ``started_at``,
``step_started_at``, ``ended_at``, ``reason``; times in epoch seconds) and the events
(``id``, ``rollout_id``, ``at``, ``kind``, ``actor``, ``step``, ``weight``, ``detail``).
A ``look`` event's detail holds the look's ``judgement`` (:meth:`Judgement.to_dict
<stalwart.rollout.judge.Judgement.to_dict>`), each arm's ``summary`` and the ``srm`` test;
any other event's detail holds its ``reason`` and numbers.

Missing keys take defaults (older events, a rollout that has not looked yet), unknown keys
are ignored, and a value of the wrong type is a :class:`~stalwart.errors.ConfigError`
naming the event and the field. ``plan`` and ``detail`` may also be JSON text.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final

import msgspec

from stalwart.errors import ConfigError

__all__ = [
    "DECISION_KINDS",
    "Event",
    "Look",
    "LookVerdict",
    "Plan",
    "PlanRule",
    "PlanStep",
    "RolloutHistory",
    "Srm",
]

DECISION_KINDS: Final = ("start", "step", "pause", "resume", "hold", "promote", "rollback", "weight")
"""The kinds of event other than ``look``: what the controller or a person decided."""

# Epoch seconds between 1970 and 9999: a NaN or an infinite time is refused where it is read.
Epoch = Annotated[float, msgspec.Meta(ge=0.0, le=253_402_300_799.0)]
# A number a look reports: finite or not (an SRM statistic may be infinite), or null.
Number = float | None


class PlanStep(msgspec.Struct, frozen=True, kw_only=True):
    """One step of the plan: the canary's weight and how long and how much traffic it must
    see before the controller moves on."""

    weight: float
    min_seconds: float = 0.0
    min_requests: int = 0


class PlanRule(msgspec.Struct, frozen=True, kw_only=True):
    """What the report needs of a :class:`~stalwart.rollout.judge.MetricRule` (its dict);
    ``log_scale`` tells it to show effects as ratios."""

    name: str
    kind: str = ""
    tolerance: Number = None
    direction: str = ""
    alpha: Number = None
    min_n: int | None = None
    log_scale: bool = False
    on_fail: str = "rollback"
    required: bool = True


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """The rollout's plan: its steps, how often it looks, and the rules it judges by."""

    steps: tuple[PlanStep, ...] = ()
    look_seconds: Number = None
    rules: tuple[PlanRule, ...] = ()


class LookVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """One metric's :class:`~stalwart.rollout.judge.Verdict` at one look, as stored."""

    metric: str
    decision: str = "inconclusive"
    reason: str = ""
    method: str = ""
    direction: str = ""
    tolerance: Number = None
    alpha: Number = None
    min_n: int | None = None
    n_canary: int = 0
    n_primary: int = 0
    canary: Number = None
    primary: Number = None
    effect: Number = None
    relative_effect: Number = None
    lower: Number = None
    upper: Number = None
    p_value: Number = None


class LookWindow(msgspec.Struct, frozen=True):
    """The span of time a look's data come from."""

    start: dt.datetime
    end: dt.datetime


class Srm(msgspec.Struct, frozen=True, kw_only=True):
    """The sample-ratio-mismatch test at one look (:func:`~stalwart.rollout.routing.sample_ratio_mismatch`)."""

    chi2: Number = None
    p_value: Number = None
    mismatch: bool = False
    total: int | None = None
    threshold: Number = None


class Look(msgspec.Struct, frozen=True, kw_only=True):
    """What one look found: the judgement's recommendation and verdicts, each arm's summary
    (``{"primary": {...}, "canary": {...}}``: counts, rates, latency quantiles) and SRM."""

    recommendation: str = ""
    reason: str = ""
    window: LookWindow | None = None
    verdicts: tuple[LookVerdict, ...] = ()
    summary: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    srm: Srm | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the rollout: a look (``look`` is set) or a decision (``reason`` is its
    detail's reason). ``weight`` is the canary's weight after the event, when recorded."""

    id: int
    at: Epoch
    kind: str
    actor: str = ""
    step: int | None = None
    weight: Number = None
    reason: str | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)
    look: Look | None = None

    @property
    def time(self) -> dt.datetime:
        """``at`` as an aware UTC time."""
        return dt.datetime.fromtimestamp(self.at, dt.UTC)


class RolloutHistory(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout and its events, oldest first: what the rollout report and
    ``stalwart rollout status`` draw. Build it with :meth:`from_rows`."""

    id: int
    deployment: str
    canary: str
    primary: str
    state: str
    started_at: Epoch
    salt: str = ""
    plan: Plan = msgspec.field(default_factory=Plan)
    step: int = 0
    weight: float = 0.0
    step_started_at: Epoch | None = None
    ended_at: Epoch | None = None
    reason: str | None = None
    events: tuple[Event, ...] = ()

    @classmethod
    def from_rows(cls, rollout: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> RolloutHistory:
        """The history from the store's rollout row and its events (any order; sorted by id).

        Raises :class:`~stalwart.errors.ConfigError` naming the field that does not read."""
        row = dict(rollout)
        if "plan" in row and row["plan"] is not None:
            row["plan"] = _mapping(row["plan"], f"rollout {rollout.get('id', '?')}: $.plan")
        elif "plan" in row:
            del row["plan"]
        row["events"] = ()
        try:
            head = msgspec.convert(row, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"rollout {rollout.get('id', '?')}: {exc}") from None
        parsed = [_event(head.id, raw) for raw in events]
        parsed.sort(key=lambda e: e.id)
        return msgspec.structs.replace(head, events=tuple(parsed))

    @property
    def looks(self) -> list[Event]:
        """The ``look`` events, oldest first."""
        return [e for e in self.events if e.look is not None]

    @property
    def decisions(self) -> list[Event]:
        """Every event that is not a look, oldest first."""
        return [e for e in self.events if e.look is None]

    @property
    def last_look(self) -> Look | None:
        """The newest look's findings, or None before the first look."""
        for event in reversed(self.events):
            if event.look is not None:
                return event.look
        return None

    @property
    def started(self) -> dt.datetime:
        """``started_at`` as an aware UTC time."""
        return dt.datetime.fromtimestamp(self.started_at, dt.UTC)

    @property
    def ended(self) -> dt.datetime | None:
        """``ended_at`` as an aware UTC time, None while the rollout runs."""
        return None if self.ended_at is None else dt.datetime.fromtimestamp(self.ended_at, dt.UTC)


def _event(rollout_id: int, raw: Mapping[str, Any]) -> Event:
    where = f"rollout {rollout_id}: event {raw.get('id', '?')}"
    owner = raw.get("rollout_id", rollout_id)
    if owner != rollout_id:
        raise ConfigError(f"{where}: $.rollout_id is {owner!r}, not this rollout's id {rollout_id}")
    detail = raw.get("detail")
    detail = {} if detail is None else _mapping(detail, f"{where}: $.detail")
    fields = {k: v for k, v in raw.items() if k in _EVENT_FIELDS}
    fields["detail"] = detail
    kind = raw.get("kind")
    try:
        if kind == "look":
            judgement = detail.get("judgement") or {}
            if not isinstance(judgement, Mapping):
                raise ConfigError(f"{where}: $.detail.judgement must be an object, not {type(judgement).__name__}")
            look = {k: judgement[k] for k in ("recommendation", "reason", "window", "verdicts") if k in judgement}
            look |= {k: detail[k] for k in ("summary", "srm") if detail.get(k) is not None}
            # The detail is kept in the Look; the raw copy would double what a report holds.
            fields |= {"look": look, "detail": {}}
        else:
            reason = detail.get("reason")
            fields["reason"] = None if reason is None else str(reason)
        return msgspec.convert(fields, Event)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where} ({kind}): {_path(exc)}") from None


_EVENT_FIELDS: Final = frozenset(("id", "at", "kind", "actor", "step", "weight"))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """A mapping, or JSON text of one (a store may keep a JSON column as text)."""
    if isinstance(value, (str, bytes)):
        try:
            value = msgspec.json.decode(value)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be an object, not {type(value).__name__}")
    return dict(value)


def _path(exc: msgspec.ValidationError) -> str:
    # msgspec names the path in the Event; name it as it is in the stored detail instead.
    text = str(exc)
    for ours, stored in (("$.look.summary", "$.detail.summary"), ("$.look.srm", "$.detail.srm"), ("$.look.", "$.detail.judgement.")):
        text = text.replace(ours, stored)
    return text
