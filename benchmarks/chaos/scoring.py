"""What a fault did to the probe's requests: yield, harvest, latency, errors, records lost,
time to recover.

- **yield**: the share of requests sent during the fault that were answered (200);
- **harvest**: of those answers, the share whose decision (``predict``) is the healthy
  system's for the same request (Fox and Brewer's harvest, read as agreement); with the
  mean absolute difference of the fraud score beside it;
- **p50 / p99**: latency of every request sent during the fault, from when it was due;
- **5xx**: answers of 500 and above (no answer at all is counted apart); **shed**: of those,
  the 503s of load shedding (``over capacity``, with ``Retry-After``), which say the server
  is short of CPU, not that the fault broke an answer;
- **records lost**: requests answered 200 whose prediction record is not in the log 2 min
  after the fault (**late**: not there after 30 s);
- **recovery**: seconds from the fault's clearing to the first request due after it from
  which on every answer is a 200 that no ladder step served (None: not within the run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.chaos.traffic import Answer, Sample
from benchmarks.load import percentile

__all__ = ["Score", "recovery_seconds", "score"]


@dataclass
class Score:
    """One fault's (or one curve step's) figures; see the module docstring."""

    name: str
    sent: int
    answered: int
    yield_: float
    harvest: float
    score_error: float
    p50_ms: float
    p99_ms: float
    errors_5xx: int
    shed: int
    no_answer: int
    degraded: dict[str, int]
    failures: dict[str, int]  # statuses other than 200 ("0": no answer), how many of each
    failure_examples: dict[str, str]  # the first answer of each such status
    records_lost: int | None = None
    records_late: int | None = None  # not in the log 30 s after the fault, there within 90 s more
    recovery_s: float | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["yield"] = out.pop("yield_")
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def score(name: str, samples: Sequence[Sample], healthy: Sequence[Answer] | None) -> Score:
    """The figures of ``samples`` (the requests sent during one fault) against the
    ``healthy`` answers to the pool (None: no harvest)."""
    answered = [s for s in samples if s.status == 200 and s.answer is not None]
    agree: list[bool] = []
    diffs: list[float] = []
    for s in answered if healthy else ():
        if s.answer is None:
            continue
        reference = healthy[s.index % len(healthy)]
        agree.append(s.answer.predict == reference.predict)
        if not math.isnan(s.answer.score):
            diffs.append(abs(s.answer.score - reference.score))
    degraded: dict[str, int] = {}
    for s in answered:
        if s.answer is not None and s.answer.degraded is not None:
            degraded[s.answer.degraded] = degraded.get(s.answer.degraded, 0) + 1
    latencies = [s.latency * 1000 for s in samples]
    return Score(
        name=name,
        sent=len(samples),
        answered=len(answered),
        yield_=len(answered) / len(samples) if samples else float("nan"),
        harvest=sum(agree) / len(agree) if agree else float("nan"),
        score_error=sum(diffs) / len(diffs) if diffs else float("nan"),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        errors_5xx=sum(1 for s in samples if s.status >= 500),
        shed=sum(1 for s in samples if s.status == 503 and "over capacity" in s.error),
        no_answer=sum(1 for s in samples if s.status == 0),
        degraded=dict(sorted(degraded.items())),
        failures=_failures(samples),
        failure_examples=_examples(samples),
    )


def _examples(samples: Sequence[Sample]) -> dict[str, str]:
    examples: dict[str, str] = {}
    for s in samples:
        if s.status != 200:
            examples.setdefault(str(s.status), s.error)
    return examples


def _failures(samples: Sequence[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        if s.status != 200:
            counts[str(s.status)] = counts.get(str(s.status), 0) + 1
    return dict(sorted(counts.items()))


def recovery_seconds(samples: Sequence[Sample], cleared: float) -> float | None:
    """Seconds from ``cleared`` to the first request due after it from which every later
    one was answered 200 by the healthy path (no ``degraded``); None if the last one was not."""
    after = sorted((s for s in samples if s.due >= cleared), key=lambda s: s.due)
    recovered_at: float | None = None
    for s in after:
        healthy = s.status == 200 and s.answer is not None and s.answer.degraded is None
        if healthy and recovered_at is None:
            recovered_at = s.due
        elif not healthy:
            recovered_at = None
    return None if recovered_at is None else max(0.0, recovered_at - cleared)
