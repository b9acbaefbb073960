"""Paired comparison of a primary and its shadow: both answered the same requests.

A :class:`PairedReport` is updated with one pair of :class:`Answer` at a time, in O(1) time
and bounded memory, from sufficient statistics only, and merges with the report of another
replica (or another hour) into the report one process would have built over all the pairs:

- **classes**: how often the two predicted the same class (exact), and the confusion table
  (rows the primary's class, columns the shadow's) over at most ``max_classes`` named
  classes, the rest counted under :data:`OTHER`; per named class, McNemar's test of
  "primary says c, shadow does not" against "shadow says c, primary does not" (exact
  binomial below 25 discordant pairs, chi-squared with continuity correction above), with
  Bonferroni-adjusted p-values;
- **scores**: the distribution of differences ``shadow - primary`` (mean, sd; quantiles
  from a DataSketches KLL sketch, within its rank error of about 1.3%), each side's mean,
  their correlation, and the paired t-test on the differences with a 95% interval;
- **latency**: each side's p50 and p99 (KLL);
- **errors**: each side's error count and rate, and McNemar's test on who failed alone.

Pairs where either side failed count only towards errors (and latency): the class and
score statistics compare answers, so they use the pairs that both sides answered.
Every statistic is merged exactly (counts, Chan et al.'s pairwise rule for moments) except
the quantiles, which are the sketches' (exact below about 200 values).

>>> r = PairedReport()
>>> r.add(Answer(label="fraud", score=0.75, latency=0.004), Answer(label="fraud", score=0.5, latency=0.006))
>>> r.add(Answer(label="ok", score=0.25), Answer(label="fraud", score=0.75))
>>> r.agreement, r.score_difference_mean, r.confusion()
(0.5, 0.125, [[1, 0], [1, 0]])
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stalwart.errors import ConfigError

__all__ = [
    "EXACT_BELOW",
    "OTHER",
    "QUANTILES",
    "Answer",
    "McNemar",
    "PairedReport",
    "PairedT",
    "mcnemar",
    "paired_t",
]

OTHER = "(other)"  # the classes beyond max_classes, as one row and column
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
EXACT_BELOW = 25  # discordant pairs below which McNemar's test is the exact binomial one

_FORMAT = 1
_KLL_K = 200  # ~1.3% normalised rank error, as the monitoring profiles
_MAX_CLASSES = 1000
_LABEL_CHARS = 100  # a label longer than this is clipped: it is a table key and a JSON string


@dataclass(frozen=True, slots=True)
class Answer:
    """One side's answer to a request: its predicted class and/or score, how long it took
    (seconds), and whether it failed (then ``label`` and ``score`` are ignored)."""

    label: object = None
    score: float | None = None
    latency: float | None = None
    error: bool = False


@dataclass(frozen=True, slots=True)
class McNemar:
    """McNemar's test on a paired 2x2 table's discordant cells ``b`` and ``c``."""

    b: int
    c: int
    statistic: float
    p_value: float
    method: str  # "exact" (binomial) or "chi2" (with continuity correction)

    def to_dict(self) -> dict[str, Any]:
        return {"b": self.b, "c": self.c, "statistic": self.statistic, "p_value": self.p_value, "method": self.method}


@dataclass(frozen=True, slots=True)
class PairedT:
    """The paired t-test on differences: ``None`` where it is undefined (fewer than two
    pairs; no variation in the differences)."""

    n: int
    mean: float | None
    sd: float | None
    t: float | None
    df: int
    p_value: float | None
    ci_low: float | None  # 95% interval of the mean difference
    ci_high: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "mean": self.mean, "sd": self.sd, "t": self.t, "df": self.df,
            "p_value": self.p_value, "ci_low": self.ci_low, "ci_high": self.ci_high,
        }


def mcnemar(b: int, c: int) -> McNemar:
    """McNemar's test for discordant counts ``b`` and ``c``: the exact two-sided binomial
    test when ``b + c`` < :data:`EXACT_BELOW` (the chi-squared approximation is poor
    there), else chi-squared with one degree of freedom and continuity correction."""
    from scipy import stats  # lazily: scipy is slow to import and only reports need it

    n = b + c
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, "exact")
    if n < EXACT_BELOW:
        p = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), n, 0.5)))
        return McNemar(b, c, float(min(b, c)), p, "exact")
    statistic = max(abs(b - c) - 1, 0) ** 2 / n
    return McNemar(b, c, float(statistic), float(stats.chi2.sf(statistic, 1)), "chi2")


def paired_t(n: int, mean: float, m2: float) -> PairedT:
    """The two-sided paired t-test of "mean difference = 0" from the differences' count,
    mean and sum of squared deviations (``scipy.stats.ttest_rel`` on the raw pairs)."""
    from scipy import stats

    if n < 2:
        return PairedT(n, mean if n else None, None, None, max(n - 1, 0), None, None, None)
    df = n - 1
    sd = math.sqrt(max(m2, 0.0) / df)
    se = sd / math.sqrt(n)
    if se == 0.0:
        # Every difference equal: no test to run. Identical answers differ by nothing (p 1);
        # a constant non-zero shift is certain (p 0), as scipy's infinite t says.
        return PairedT(n, mean, 0.0, None, df, 1.0 if mean == 0.0 else 0.0, mean, mean)
    t = mean / se
    half = float(stats.t.ppf(0.975, df)) * se
    return PairedT(n, mean, sd, t, df, float(2.0 * stats.t.sf(abs(t), df)), mean - half, mean + half)


class PairedReport:
    """The paired comparison of one primary and one shadow; see the module's docstring.

    ``classes`` names classes to keep in the table from the start (a model's declared
    classes); others get their own row as they are first seen, up to ``max_classes``.
    Merging reports that named different classes is exact for agreement and for every
    class both named; a class one report had folded into OTHER stays there.
    """

    __slots__ = (
        "_agree",
        "_classes",
        "_confusion",
        "_diff",
        "_diff_sketch",
        "_latency",
        "_scores",
        "errors_both",
        "errors_primary",
        "errors_shadow",
        "max_classes",
        "pairs",
    )

    def __init__(self, max_classes: int = 20, classes: Iterable[object] = ()) -> None:
        named = {_label(c) for c in classes}
        if not 1 <= max_classes <= _MAX_CLASSES:
            raise ConfigError(f"max_classes must be between 1 and {_MAX_CLASSES}, not {max_classes}")
        if len(named) > max_classes or OTHER in named:
            raise ConfigError(f"classes: at most max_classes ({max_classes}) classes, none named {OTHER!r}")
        self.max_classes = max_classes
        self.pairs = 0
        self.errors_primary = 0
        self.errors_shadow = 0
        self.errors_both = 0
        self._agree = 0
        # The named classes, at most max_classes: those declared, then the first ones seen.
        self._classes: set[str] = named
        self._confusion: dict[tuple[str, str], int] = {}
        self._diff = _Moments()  # shadow - primary
        self._scores = _CoMoments()  # (primary, shadow)
        self._diff_sketch = _kll()
        self._latency = (_kll(), _kll())

    # -- updates ----------------------------------------------------------------------

    def add(self, primary: Answer, shadow: Answer) -> None:
        """Count one request both sides answered (or failed): O(1)."""
        self.pairs += 1
        if primary.latency is not None and math.isfinite(primary.latency):
            self._latency[0].update(primary.latency)
        if shadow.latency is not None and math.isfinite(shadow.latency):
            self._latency[1].update(shadow.latency)
        if primary.error or shadow.error:
            self.errors_primary += primary.error
            self.errors_shadow += shadow.error
            self.errors_both += primary.error and shadow.error
            return
        if primary.label is not None and shadow.label is not None:
            p, s = _label(primary.label), _label(shadow.label)
            self._agree += p == s
            key = (self._slot(p), self._slot(s))
            confusion = self._confusion
            confusion[key] = confusion.get(key, 0) + 1
        x, y = primary.score, shadow.score
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
            self._diff.add(y - x)
            self._scores.add(x, y)
            self._diff_sketch.update(y - x)

    def merge(self, other: PairedReport) -> PairedReport:
        """Add ``other``'s pairs to this report, in place (and return it). Named classes are
        the union of both; past ``max_classes``, the least frequent are folded into OTHER."""
        self.pairs += other.pairs
        self.errors_primary += other.errors_primary
        self.errors_shadow += other.errors_shadow
        self.errors_both += other.errors_both
        self._agree += other._agree
        for key, count in other._confusion.items():
            self._confusion[key] = self._confusion.get(key, 0) + count
        self._classes |= other._classes
        if len(self._classes) > self.max_classes:
            self._fold()
        self._diff.merge(other._diff)
        self._scores.merge(other._scores)
        self._diff_sketch.merge(other._diff_sketch)
        self._latency[0].merge(other._latency[0])
        self._latency[1].merge(other._latency[1])
        return self

    # -- results ----------------------------------------------------------------------

    @property
    def answered(self) -> int:
        """Pairs that both sides answered (neither failed)."""
        return self.pairs - self.errors_primary - self.errors_shadow + self.errors_both

    @property
    def labelled(self) -> int:
        """Answered pairs where both sides gave a class."""
        return sum(self._confusion.values())

    @property
    def agreed(self) -> int:
        """Labelled pairs where both gave the same class."""
        return self._agree

    @property
    def scored(self) -> int:
        """Answered pairs where both gave a finite score."""
        return self._diff.n

    @property
    def agreement(self) -> float | None:
        """Share of labelled pairs where both gave the same class (``None`` before any)."""
        labelled = self.labelled
        return self._agree / labelled if labelled else None

    @property
    def score_difference_mean(self) -> float | None:
        """Mean of ``shadow - primary`` over the scored pairs."""
        return self._diff.mean if self._diff.n else None

    def labels(self) -> list[str]:
        """The confusion table's labels: named classes sorted, then OTHER if it was used."""
        named = sorted(self._classes)
        if any(OTHER in key for key in self._confusion):
            named.append(OTHER)
        return named

    def confusion(self) -> list[list[int]]:
        """Counts by the primary's class (rows) and the shadow's (columns), in :meth:`labels` order."""
        labels = self.labels()
        return [[self._confusion.get((p, s), 0) for s in labels] for p in labels]

    def class_tests(self) -> list[tuple[str, McNemar, float]]:
        """Per named class: McNemar's test of "only the primary said it" against "only the
        shadow said it", and its Bonferroni-adjusted p-value."""
        rows: dict[str, int] = {}
        cols: dict[str, int] = {}
        for (p, s), count in self._confusion.items():
            if p != s:
                rows[p] = rows.get(p, 0) + count
                cols[s] = cols.get(s, 0) + count
        named = sorted(self._classes)
        tests = [(c, mcnemar(rows.get(c, 0), cols.get(c, 0))) for c in named]
        return [(c, test, min(1.0, test.p_value * len(named))) for c, test in tests]

    def error_test(self) -> McNemar:
        """McNemar's test of "only the primary failed" against "only the shadow failed"."""
        return mcnemar(self.errors_primary - self.errors_both, self.errors_shadow - self.errors_both)

    def score_test(self) -> PairedT:
        """The paired t-test on score differences."""
        return paired_t(self._diff.n, self._diff.mean, self._diff.m2)

    def score_difference_quantiles(self, qs: tuple[float, ...] = QUANTILES) -> list[float] | None:
        """Quantiles of ``shadow - primary`` (KLL), ``None`` before any scored pair."""
        return _quantiles(self._diff_sketch, qs)

    def score_difference_histogram(self, bins: int = 30) -> tuple[list[float], list[float]] | None:
        """The distribution of ``shadow - primary`` as ``bins`` equal-width bins from the
        smallest difference to the largest: (edges, each bin's share of the scored pairs),
        from the KLL sketch (shares within its rank error); ``None`` before any scored pair."""
        sketch = self._diff_sketch
        if sketch.is_empty():
            return None
        if not 1 <= bins <= 1000:
            raise ConfigError(f"bins must be between 1 and 1000, not {bins}")
        low, high = float(sketch.get_min_value()), float(sketch.get_max_value())
        if high <= low:
            return [low, low], [1.0]
        step = (high - low) / bins
        inner = [low + step * i for i in range(1, bins)]
        # Masses of (-inf, e1), [e1, e2), ..., [e_last, +inf): the first and last hold the ends.
        masses = [float(m) for m in sketch.get_pmf(inner)] if inner else [1.0]
        return [low, *inner, high], masses

    def latency_quantiles(self, side: str, qs: tuple[float, ...] = (0.5, 0.99)) -> list[float] | None:
        """Quantiles of one side's latency in seconds (``side`` is "primary" or "shadow")."""
        return _quantiles(self._latency[_side(side)], qs)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-safe data (no NaN or infinity): ``summary`` for readers,
        ``state`` (sketches in base64) for :meth:`from_dict`."""
        return {"format": _FORMAT, "summary": self._summary(), "state": self._state()}

    def to_state(self) -> dict[str, Any]:
        """Only what :meth:`from_dict` reads (no ``summary``): no statistic is computed, so
        a writer never imports scipy."""
        return {"format": _FORMAT, "state": self._state()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairedReport:
        """Rebuild a report from :meth:`to_dict`'s data (its ``state``)."""
        try:
            if data["format"] != _FORMAT:
                raise ConfigError(f"paired report format {data['format']!r} is not {_FORMAT}; rebuild it with this release")
            state = data["state"]
            report = cls(int(state["max_classes"]))
            report.pairs = int(state["pairs"])
            report.errors_primary, report.errors_shadow, report.errors_both = (int(v) for v in state["errors"])
            report._agree = int(state["agree"])
            report._classes = {str(c) for c in state["classes"]}
            report._confusion = {(str(p), str(s)): int(n) for p, s, n in state["confusion"]}
            report._diff = _Moments(*state["diff"])
            report._scores = _CoMoments(*state["scores"])
            report._diff_sketch = _unkll(state["diff_sketch"])
            report._latency = (_unkll(state["latency"][0]), _unkll(state["latency"][1]))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"stored paired report is damaged ({type(exc).__name__}: {exc}); rebuild it") from exc
        if len(report._classes) > report.max_classes:
            raise ConfigError("stored paired report names more classes than its max_classes; rebuild it")
        return report

    # -- internals --------------------------------------------------------------------

    def _slot(self, label: str) -> str:
        classes = self._classes
        if label in classes:
            return label
        if len(classes) < self.max_classes and label != OTHER:
            classes.add(label)
            return label
        return OTHER

    def _fold(self) -> None:
        totals = dict.fromkeys(self._classes, 0)
        for (p, s), count in self._confusion.items():
            if p in totals:
                totals[p] += count
            if s in totals:
                totals[s] += count
        ranked = sorted(totals, key=lambda c: (-totals[c], c))  # ties by name: replicas agree
        keep = set(ranked[: self.max_classes])
        folded: dict[tuple[str, str], int] = {}
        for (p, s), count in self._confusion.items():
            key = (p if p in keep else OTHER, s if s in keep else OTHER)
            folded[key] = folded.get(key, 0) + count
        self._classes, self._confusion = keep, folded

    def _summary(self) -> dict[str, Any]:
        answered = self.answered
        labels = self.labels()
        diff = self.score_test()
        scores = self._scores
        return {
            "pairs": self.pairs,
            "answered": answered,
            "errors": {
                "primary": self.errors_primary,
                "shadow": self.errors_shadow,
                "both": self.errors_both,
                "primary_rate": self.errors_primary / self.pairs if self.pairs else None,
                "shadow_rate": self.errors_shadow / self.pairs if self.pairs else None,
                "test": self.error_test().to_dict(),
            },
            "classes": {
                "labelled": self.labelled,
                "agree": self._agree,
                "agreement": self.agreement,
                "labels": labels,
                "confusion": self.confusion(),
                "tests": [
                    {"class": c, **test.to_dict(), "p_adjusted": adjusted} for c, test, adjusted in self.class_tests()
                ],
            },
            "scores": {
                "scored": scores.n,
                "primary_mean": scores.mean_x if scores.n else None,
                "shadow_mean": scores.mean_y if scores.n else None,
                "correlation": _finite(scores.correlation()),
                "difference": {
                    **{k: _finite(v) for k, v in diff.to_dict().items()},
                    "quantiles": _quantile_dict(self._diff_sketch),
                },
            },
            "latency": {side: _quantile_dict(self._latency[i], (0.5, 0.99)) for i, side in enumerate(_SIDES)},
        }

    def _state(self) -> dict[str, Any]:
        return {
            "max_classes": self.max_classes,
            "pairs": self.pairs,
            "errors": [self.errors_primary, self.errors_shadow, self.errors_both],
            "agree": self._agree,
            "classes": sorted(self._classes),
            "confusion": [[p, s, n] for (p, s), n in sorted(self._confusion.items())],
            "diff": self._diff.state(),
            "scores": self._scores.state(),
            "diff_sketch": _b64kll(self._diff_sketch),
            "latency": [_b64kll(self._latency[0]), _b64kll(self._latency[1])],
        }


# --- internals ---------------------------------------------------------------------------

_SIDES = ("primary", "shadow")


class _Moments:
    """Count, mean and sum of squared deviations (Welford; merged by Chan et al.)."""

    __slots__ = ("m2", "mean", "n")

    def __init__(self, n: int = 0, mean: float = 0.0, m2: float = 0.0) -> None:
        self.n, self.mean, self.m2 = int(n), float(mean), float(m2)

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def merge(self, other: _Moments) -> None:
        n = self.n + other.n
        if other.n == 0:
            return
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.mean += delta * other.n / n
        self.n = n

    def state(self) -> list[float]:
        return [self.n, self.mean, self.m2]


class _CoMoments:
    """Both sides' means, squared deviations and co-moment, for their correlation."""

    __slots__ = ("cxy", "m2x", "m2y", "mean_x", "mean_y", "n")

    def __init__(
        self, n: int = 0, mean_x: float = 0.0, mean_y: float = 0.0, m2x: float = 0.0, m2y: float = 0.0, cxy: float = 0.0
    ) -> None:
        self.n = int(n)
        self.mean_x, self.mean_y = float(mean_x), float(mean_y)
        self.m2x, self.m2y, self.cxy = float(m2x), float(m2y), float(cxy)

    def add(self, x: float, y: float) -> None:
        self.n += 1
        dx = x - self.mean_x
        self.mean_x += dx / self.n
        dy = y - self.mean_y
        self.mean_y += dy / self.n
        self.m2x += dx * (x - self.mean_x)
        self.m2y += dy * (y - self.mean_y)
        self.cxy += dx * (y - self.mean_y)

    def merge(self, other: _CoMoments) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        dx = other.mean_x - self.mean_x
        dy = other.mean_y - self.mean_y
        weight = self.n * other.n / n
        self.m2x += other.m2x + dx * dx * weight
        self.m2y += other.m2y + dy * dy * weight
        self.cxy += other.cxy + dx * dy * weight
        self.mean_x += dx * other.n / n
        self.mean_y += dy * other.n / n
        self.n = n

    def correlation(self) -> float | None:
        if self.n < 2 or self.m2x <= 0.0 or self.m2y <= 0.0:
            return None
        return max(-1.0, min(1.0, self.cxy / math.sqrt(self.m2x * self.m2y)))

    def state(self) -> list[float]:
        return [self.n, self.mean_x, self.mean_y, self.m2x, self.m2y, self.cxy]


def _label(value: object) -> str:
    # Both sides' labels meet as strings: 1, 1.0, np.int64(1) and "1" are one class.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # a numpy scalar
        if isinstance(value, float) and value.is_integer():
            value = int(value)
    text = value if isinstance(value, str) else str(value)
    return text[:_LABEL_CHARS]


def _side(side: str) -> int:
    try:
        return _SIDES.index(side)
    except ValueError:
        raise ConfigError(f"side must be 'primary' or 'shadow', not {side!r}") from None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _kll() -> Any:
    import datasketches  # lazily, as the monitoring profiles: importing stalwart stays light

    return datasketches.kll_doubles_sketch(_KLL_K)


def _unkll(text: str) -> Any:
    import datasketches

    return datasketches.kll_doubles_sketch.deserialize(base64.b64decode(text.encode("ascii"), validate=True))


def _b64kll(sketch: Any) -> str:
    return base64.b64encode(sketch.serialize()).decode("ascii")


def _quantiles(sketch: Any, qs: tuple[float, ...]) -> list[float] | None:
    if sketch.is_empty():
        return None
    return [float(v) for v in sketch.get_quantiles(list(qs))]


def _quantile_dict(sketch: Any, qs: tuple[float, ...] = QUANTILES) -> dict[str, Any]:
    values = _quantiles(sketch, qs)
    return {"count": int(sketch.n), **{f"p{round(q * 100):02d}": (values[i] if values else None) for i, q in enumerate(qs)}}
