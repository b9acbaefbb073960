"""What a canary rollout is judged on: each arm's running sums, read from the prediction log.

A rollout controller looks every few seconds. At each look it calls
:meth:`Evidence.advance`, which reads the deployment's prediction records that reached the
database since the last look (table ``predictions``; records of variant ``"primary"`` and
``"canary"`` only) and adds them to one :class:`Tally` per arm; :func:`observations` turns
the tallies (and :func:`accuracy`, from labels) into the :class:`~.judge.Arms` that
:class:`~.judge.Judge` reads, keyed by the names of :func:`default_rules`.

Which records count, and how (errors are 5xx; a client's 4xx is left out, except a 422,
which counts as a validation violation), is :mod:`stalwart.rollout.tally`'s table.

**The watermark.** :meth:`Evidence.advance` reads records with ``time_ns`` in
``(watermark, until_ns]``, oldest first, a chunk at a time, at most ``max_rows`` per call;
then the watermark moves to ``until_ns``. When the cap stops it first, the watermark moves
only as far as it read (the last record's time and request id, so records sharing that
nanosecond are neither skipped nor counted twice) and the next call continues from there.

**Why a lag.** ``time_ns`` is when a request *arrived*; its record reaches the database
after the answer, plus the prediction log's delivery (spooled within 50 ms, handed to the
sink every 250 ms or so). A request slower than the distance between ``until_ns`` and now is
not in the database yet when the look reads past its arrival time, and a watermark that
has passed it never reads it: slow requests would be missed, and latency (the canary's
above all, if it is the slow one) biased low. The controller therefore reads up to
``now - lag``; :data:`DEFAULT_LAG_SECONDS` is 15 s: the default model time limit (10 s,
``STALWART_MODEL_TIMEOUT_SECONDS``; a request slower than that is a 504) plus the log's
delivery and a margin. With longer time limits, raise it to the limit plus 5 s. Records
that arrive later still (the prediction sink was down and the spool delivers them minutes
late) are missed; the cost of a longer lag is only that verdicts trail by it.

>>> threshold = latency_threshold(db, "fraud", before_ns=started)     # doctest: +SKIP
>>> rules = default_rules(tail_latency=None) if threshold is None else default_rules()  # doctest: +SKIP
>>> evidence = Evidence(started, slow_ms=threshold)                    # doctest: +SKIP
>>> evidence.advance(db, "fraud", until_ns=time.time_ns() - DEFAULT_LAG_NS)  # each look  # doctest: +SKIP
>>> labels = accuracy(db, "fraud", started, evidence.watermark_ns)    # doctest: +SKIP
>>> Judge(rules).judge(evidence.observations(labels, rules=rules), window=evidence.window())  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
import numpy as np
from sqlalchemy import select

from stalwart.durations import NS
from stalwart.errors import ConfigError
from stalwart.monitoring.feedback import Label, LoggedPrediction, decode_logged
from stalwart.monitoring.quality import OutputReading, classified_rows
from stalwart.rollout.judge import Arms, MetricRule, Window
from stalwart.rollout.sequential import Proportion
from stalwart.rollout.tally import SCORES_PER_RECORD, ArmCounter, Tally, score_divergence
from stalwart.storage import Database
from stalwart.storage.tables import feedback, predictions

__all__ = [
    "ACCURACY_MAX_ROWS",
    "ARMS",
    "DEFAULT_LAG_NS",
    "DEFAULT_LAG_SECONDS",
    "MAX_ROWS",
    "RULE_NAMES",
    "SCORES_PER_RECORD",
    "THRESHOLD_MAX_ROWS",
    "THRESHOLD_MIN_ROWS",
    "THRESHOLD_WINDOW_NS",
    "Evidence",
    "Progress",
    "Tally",
    "accuracy",
    "default_rules",
    "latency_threshold",
    "observations",
    "score_divergence",
]

ARMS: Final = ("primary", "canary")
DEFAULT_LAG_SECONDS: Final = 15.0
DEFAULT_LAG_NS: Final = int(DEFAULT_LAG_SECONDS * NS)
MAX_ROWS: Final = 100_000  # records one advance reads at most
ACCURACY_MAX_ROWS: Final = 20_000  # newest labelled rows per arm: about half a second per 20,000 (benchmark "evidence")
THRESHOLD_WINDOW_NS: Final = 15 * 60 * NS
THRESHOLD_MAX_ROWS: Final = 50_000
THRESHOLD_MIN_ROWS: Final = 1_000  # a p99 from fewer rests on under ten values above it
RULE_NAMES: Final = (
    "error_rate", "degradation_rate", "violation_rate", "latency", "tail_latency", "score_shift", "accuracy",
)

_CHUNK = 2_000  # records per read: memory per look is bounded by this, not by the traffic


class Progress(msgspec.Struct, frozen=True):
    """What one :meth:`Evidence.advance` did: ``rows`` records read (client errors
    included), whether ``max_rows`` stopped it before ``until_ns`` (call again), and the
    watermark it left."""

    rows: int
    capped: bool
    watermark_ns: int


class Evidence:
    """The tallies of one rollout window and how far into the log they reach.

    The window starts at ``start_ns`` (inclusive); every record of either arm with
    ``start_ns <= time_ns <= watermark_ns`` has been counted, except, after a capped read,
    those at ``watermark_ns`` whose request id sorts after ``watermark_id``. ``slow_ms`` is
    the fixed latency threshold of the tail rule (:func:`latency_threshold`), or None.
    """

    def __init__(self, start_ns: int, *, slow_ms: float | None = None) -> None:
        if slow_ms is not None and not (math.isfinite(slow_ms) and slow_ms > 0):
            raise ConfigError(f"slow_ms: a positive number of milliseconds, not {slow_ms!r}")
        self.start_ns = start_ns
        self.watermark_ns = start_ns - 1
        self.watermark_id: str | None = None
        self.slow_ms = slow_ms
        self.tallies: dict[str, Tally] = {arm: Tally(slow_ms=slow_ms) for arm in ARMS}

    def advance(
        self,
        db: Database,
        deployment: str,
        until_ns: int,
        *,
        reading: OutputReading | None = None,
        max_rows: int = MAX_ROWS,
    ) -> Progress:
        """Count the records of ``deployment`` with ``time_ns`` in ``(watermark, until_ns]``
        (see the module docstring: pass ``until_ns = now - lag``), reading at most
        ``max_rows`` of them, 2,000 at a time. ``reading`` says where the model's score is
        (a deployment's ``quality`` declaration). A look that fails (the database is down:
        StorageError) changes nothing: the tallies and the watermark move together, at
        its end."""
        if max_rows < 1:
            raise ConfigError(f"max_rows: at least 1 record per look, not {max_rows!r}")
        if until_ns < self.watermark_ns:
            return Progress(0, False, self.watermark_ns)
        reading = reading or OutputReading()
        counters = {arm: ArmCounter(self.slow_ms, reading) for arm in ARMS}
        after_ns, after_id = self.watermark_ns, self.watermark_id
        read, capped = 0, False
        while True:
            want = min(_CHUNK, max_rows - read)
            with db.read() as conn:
                page = conn.execute(_page(deployment, after_ns, after_id, until_ns, want)).all()
            for _time, _id, variant, status, degraded, latency_ms, text in page:
                counters[str(variant)].take(int(status), degraded is not None, float(latency_ms), text)
            for counter in counters.values():
                counter.flush()
            read += len(page)
            if page:
                after_ns, after_id = int(page[-1][0]), str(page[-1][1])
            if len(page) < want:
                after_ns, after_id = until_ns, None
                break
            if read >= max_rows:
                capped = True
                break
        for arm, counter in counters.items():
            self.tallies[arm] = self.tallies[arm].merge(counter.tally())
        self.watermark_ns, self.watermark_id = after_ns, after_id
        return Progress(read, capped, after_ns)

    def window(self) -> Window:
        """The span the tallies cover, for :meth:`~.judge.Judge.judge`."""
        return Window(start=_datetime(self.start_ns), end=_datetime(max(self.watermark_ns, self.start_ns)))

    def observations(
        self, accuracy: Mapping[str, Proportion] | None = None, *, rules: Sequence[MetricRule] | None = None
    ) -> dict[str, Arms]:
        """:func:`observations` of these tallies."""
        return observations(self.tallies, accuracy, rules=rules)

    def summary(self) -> dict[str, Any]:
        """Each arm's :meth:`Tally.summary` (the canary's with its divergence from the
        primary) and the window."""
        primary = self.tallies["primary"]
        return {
            "window": {"start_ns": self.start_ns, "watermark_ns": self.watermark_ns},
            "primary": primary.summary(),
            "canary": self.tallies["canary"].summary(primary),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to resume (after a crash) without reading the log again."""
        return {
            "start_ns": self.start_ns,
            "watermark_ns": self.watermark_ns,
            "watermark_id": self.watermark_id,
            "slow_ms": self.slow_ms,
            "tallies": {arm: tally.to_dict() for arm, tally in self.tallies.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        """The evidence :meth:`to_dict` saved; ConfigError when the data are not that."""
        try:
            state = msgspec.convert(dict(data), _State)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"stored rollout evidence: {exc}") from exc
        evidence = cls(state.start_ns, slow_ms=state.slow_ms)
        evidence.watermark_ns, evidence.watermark_id = state.watermark_ns, state.watermark_id
        for arm in ARMS:
            tally = Tally.from_dict(state.tallies.get(arm, {"slow_ms": state.slow_ms}))
            if tally.slow_ms != state.slow_ms:
                raise ConfigError(f"stored rollout evidence: the {arm} tally's slow_ms differs from the evidence's")
            evidence.tallies[arm] = tally
        return evidence


def observations(
    tallies: Mapping[str, Tally],
    accuracy: Mapping[str, Proportion] | None = None,
    *,
    rules: Sequence[MetricRule] | None = None,
) -> dict[str, Arms]:
    """Each metric's :class:`~.judge.Arms`, keyed by the rule names of :func:`default_rules`.

    ``tail_latency`` is left out unless both arms counted exceedances over the same
    threshold, ``accuracy`` unless given; ``rules`` keeps only the metrics they judge (a
    :class:`~.judge.Judge` refuses observations without a rule). Rates are out of each
    arm's ``requests``; the tail's out of its answered requests.
    """
    canary, primary = tallies.get("canary", Tally()), tallies.get("primary", Tally())

    def rate(events: str) -> Arms:
        return Arms(
            Proportion(canary.requests, getattr(canary, events)), Proportion(primary.requests, getattr(primary, events))
        )

    found = {
        "error_rate": rate("errors"),
        "degradation_rate": rate("degraded"),
        "violation_rate": rate("violations"),
        "latency": Arms(canary.log_latency, primary.log_latency),
        "score_shift": Arms(canary.scores, primary.scores),
    }
    if canary.slow_ms is not None and canary.slow_ms == primary.slow_ms:
        found["tail_latency"] = Arms(
            Proportion(canary.log_latency.n, canary.slow), Proportion(primary.log_latency.n, primary.slow)
        )
    if accuracy is not None:
        found["accuracy"] = Arms(accuracy.get("canary", Proportion()), accuracy.get("primary", Proportion()))
    if rules is not None:
        wanted = {rule.name for rule in rules}
        found = {name: arms for name, arms in found.items() if name in wanted}
    return found


def default_rules(**overrides: MetricRule | None) -> tuple[MetricRule, ...]:
    """The rules a rollout is judged by (``docs/rollouts.md``, "What the controller
    measures"): ``name=rule`` replaces one, ``name=None`` drops it (``tail_latency=None``
    when :func:`latency_threshold` found too little data, ``score_shift=None`` for a model
    without scores). A replacement must carry the name it replaces."""
    unknown = sorted(set(overrides) - set(RULE_NAMES))
    if unknown:
        raise ConfigError(f"default_rules: no rule named {', '.join(unknown)}; the rules are {', '.join(RULE_NAMES)}")
    alpha = 0.01  # seven rules: a good canary is rolled back or held by chance at most 7 % of the time
    rules = {
        "error_rate": MetricRule.rate("error_rate", max_rise=0.005, alpha=alpha),
        "degradation_rate": MetricRule.rate("degradation_rate", max_rise=0.01, alpha=alpha),
        "violation_rate": MetricRule.rate("violation_rate", max_rise=0.005, alpha=alpha),
        "latency": MetricRule.latency("latency", max_ratio_rise=0.10, alpha=alpha),
        "tail_latency": MetricRule.tail_latency("tail_latency", max_rise=0.01, alpha=alpha),
        # Rolls back: a retrained model whose scores move this far is suspect, and a rollback
        # is cheap to undo (start again with a wider tolerance when the shift is wanted).
        "score_shift": MetricRule.score_shift("score_shift", max_shift=0.02, alpha=alpha, required=False),
        "accuracy": MetricRule.accuracy("accuracy", max_drop=0.02, alpha=alpha),
    }
    for name, rule in overrides.items():
        if rule is not None and rule.name != name:
            raise ConfigError(f"default_rules: the rule given for {name!r} is named {rule.name!r}; give it the name it replaces")
        rules[name] = rule  # type: ignore[assignment]  # None drops it below
    return tuple(rule for rule in rules.values() if rule is not None)


def accuracy(
    db: Database,
    deployment: str,
    start_ns: int,
    end_ns: int,
    reading: OutputReading | None = None,
    *,
    max_rows: int = ACCURACY_MAX_ROWS,
) -> dict[str, Proportion]:
    """Per arm, correct predictions out of labelled ones, over answered requests with
    ``start_ns <= time_ns <= end_ns`` (an :class:`Evidence`'s start and watermark): the
    newest ``max_rows`` labelled prediction rows per arm, read as
    :func:`~stalwart.monitoring.quality.quality_over_time` reads them (labels joined by
    request id: those sent by request id, and entity labels matched when stored). Empty
    proportions for a regression, whose predictions are never simply correct.
    """
    if max_rows < 1:
        raise ConfigError(f"max_rows: at least 1 labelled row per arm, not {max_rows!r}")
    reading = reading or OutputReading()
    records: dict[str, LoggedPrediction] = {}
    labels: dict[tuple[str, int], tuple[Label, int]] = {}
    p, f = predictions.c, feedback.c
    for arm in ARMS:
        statement = (
            select(f.request_id, f.row_index, f.label, f.received_at_ns, p.record)
            .join(predictions, p.request_id == f.request_id)
            .where(
                p.deployment == deployment, p.variant == arm, p.status < 400,
                p.time_ns >= start_ns, p.time_ns <= end_ns,
            )
            .order_by(p.time_ns.desc(), f.request_id.desc(), f.row_index)
            .limit(max_rows)
        )
        with db.read() as conn:
            rows = conn.execute(statement).all()
        for request_id, row, label, received, text in rows:
            key = (str(request_id), int(row or 0))
            known = labels.get(key)
            if known is None or int(received) >= known[1]:  # the latest label wins, as in quality reports
                labels[key] = (label, int(received))
            if key[0] not in records:
                records[key[0]] = decode_logged(text)
    found = {arm: Proportion() for arm in ARMS}
    ordered = list(records.values())
    judged = classified_rows(ordered, {key: value for key, (value, _) in labels.items()}, reading) if ordered else None
    if judged is None:
        return found
    owners, correct = judged
    variants = np.asarray([record.variant for record in ordered], dtype=object)
    for arm in ARMS:
        mine = variants[owners] == arm
        found[arm] = Proportion(int(mine.sum()), int(correct[mine].sum()))
    return found


def latency_threshold(
    db: Database,
    deployment: str,
    before_ns: int,
    *,
    window_ns: int = THRESHOLD_WINDOW_NS,
    quantile: float = 0.99,
    max_rows: int = THRESHOLD_MAX_ROWS,
    min_rows: int = THRESHOLD_MIN_ROWS,
) -> float | None:
    """The primary's latency ``quantile`` (ms) over its answered requests in the
    ``window_ns`` before ``before_ns`` (the newest ``max_rows`` of them): the fixed
    threshold of the tail rule, taken before a step starts and never from the window being
    judged. None with fewer than ``min_rows`` requests (judge without the tail rule)."""
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"quantile: between 0 and 1 (0.99 for the p99), not {quantile!r}")
    if not 1 <= min_rows <= max_rows:
        raise ConfigError(f"min_rows ({min_rows}) and max_rows ({max_rows}): need 1 <= min_rows <= max_rows")
    if window_ns <= 0:
        raise ConfigError(f"window_ns: a positive span, not {window_ns!r}")
    p = predictions.c
    statement = (
        select(p.latency_ms)
        .where(
            p.deployment == deployment, p.variant == "primary", p.status < 400,
            p.time_ns >= before_ns - window_ns, p.time_ns < before_ns,
        )
        .order_by(p.time_ns.desc())
        .limit(max_rows)
    )
    with db.read() as conn:
        values = np.asarray(conn.execute(statement).scalars().all(), dtype=np.float64)
    if values.size < min_rows:
        return None
    return float(np.quantile(values, quantile))


# -- reading records ---------------------------------------------------------------------


class _State(msgspec.Struct):
    start_ns: int
    watermark_ns: int
    watermark_id: str | None = None
    slow_ms: float | None = None
    tallies: dict[str, dict[str, Any]] = {}


def _page(deployment: str, after_ns: int, after_id: str | None, until_ns: int, limit: int) -> Any:
    """The next records after the cursor, oldest first (request id breaks ties)."""
    p = predictions.c
    statement = select(p.time_ns, p.request_id, p.variant, p.status, p.degraded, p.latency_ms, p.record).where(
        p.deployment == deployment, p.variant.in_(ARMS), p.time_ns <= until_ns
    )
    if after_id is None:
        statement = statement.where(p.time_ns > after_ns)
    else:
        # The range condition first, so the (deployment, time_ns) index bounds the scan.
        statement = statement.where(p.time_ns >= after_ns, (p.time_ns > after_ns) | (p.request_id > after_id))
    return statement.order_by(p.time_ns, p.request_id).limit(limit)


def _datetime(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // NS, tz=dt.UTC) + dt.timedelta(microseconds=(ns % NS) // 1_000)
