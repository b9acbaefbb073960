"""The Judge: per-metric verdicts against declared tolerances, too little data never a pass,
and the recommendation drawn by the documented table."""

from __future__ import annotations

import datetime as dt
import math

import msgspec
import numpy as np
import pytest

from stalwart.errors import ConfigError
from stalwart.rollout.judge import (
    RECOMMENDATIONS,
    Arms,
    Judge,
    MetricRule,
    Verdict,
    Window,
    decide,
)
from stalwart.rollout.sequential import Moments, Proportion

WINDOW = Window(
    start=dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC), end=dt.datetime(2024, 5, 1, 13, 0, tzinfo=dt.UTC)
)


def _log_latency(rng: np.random.Generator, n: int, ratio: float = 1.0) -> Moments:
    return Moments.of(np.log(rng.lognormal(math.log(0.02 * ratio), 0.5, n)))


def _rules() -> list[MetricRule]:
    return [
        MetricRule.rate("error_rate", max_rise=0.005),
        MetricRule.latency("latency", max_ratio_rise=0.10),
        MetricRule.tail_latency("slow_share", max_rise=0.01),
        MetricRule.score_shift("score", max_shift=0.02, on_fail="hold"),
        MetricRule.accuracy("accuracy", max_drop=0.02),
    ]


def _good(rng: np.random.Generator, n: int) -> dict[str, Arms]:
    return {
        "error_rate": Arms(Proportion(n, round(0.01 * n)), Proportion(n, round(0.01 * n))),
        "latency": Arms(_log_latency(rng, n), _log_latency(rng, n)),
        "slow_share": Arms(Proportion(n, round(0.01 * n)), Proportion(n, round(0.01 * n))),
        "score": Arms(Moments.of(rng.beta(2, 5, n)), Moments.of(rng.beta(2, 5, n))),
    }


def test_good_canary_with_enough_data_is_promoted() -> None:
    """Canary like primary on 40,000 requests per arm: every required metric passes and the
    recommendation is promote, though accuracy (no labels yet, not required) is inconclusive."""
    judgement = Judge(_rules()).judge(_good(np.random.default_rng(1), 40_000), window=WINDOW)
    decisions = {v.metric: v.decision for v in judgement.verdicts}
    assert decisions == {
        "error_rate": "pass",
        "latency": "pass",
        "slow_share": "pass",
        "score": "pass",
        "accuracy": "inconclusive",
    }
    assert judgement.recommendation == "promote"


def test_small_samples_are_inconclusive_never_pass_even_when_the_canary_looks_perfect() -> None:
    """With fewer than min_n requests per arm, a canary with no errors against a primary with
    many is inconclusive (not pass), and so is one with many errors (not fail): the
    recommendation is continue."""
    rules = [MetricRule.rate("error_rate", max_rise=0.005, min_n=500)]
    for canary in (Proportion(300, 0), Proportion(300, 90)):
        judgement = Judge(rules).judge({"error_rate": Arms(canary, Proportion(5_000, 50))}, window=WINDOW)
        (verdict,) = judgement.verdicts
        assert verdict.decision == "inconclusive"
        assert "too little data" in verdict.reason
        assert "500 needed" in verdict.reason
        assert verdict.effect is not None
        assert verdict.lower is not None
        assert judgement.recommendation == "continue"


def test_no_observations_at_all_is_inconclusive_without_numbers() -> None:
    """A metric with no data (no labels arrived) is inconclusive, n = 0, numbers null."""
    verdict = Judge([MetricRule.accuracy("accuracy", max_drop=0.02)]).judge({}, window=WINDOW).verdicts[0]
    assert (verdict.decision, verdict.n_canary, verdict.effect, verdict.p_value) == ("inconclusive", 0, None, None)


def test_many_errors_roll_back() -> None:
    """The spinnaker#5622 case: a canary with 307 errors in 5,000 requests against a primary's
    50 fails the error rate and the recommendation is rollback, naming the metric."""
    rng = np.random.default_rng(2)
    observations = _good(rng, 5_000)
    observations["error_rate"] = Arms(Proportion(5_000, 307), Proportion(5_000, 50))
    judgement = Judge(_rules()).judge(observations, window=WINDOW)
    verdict = next(v for v in judgement.verdicts if v.metric == "error_rate")
    assert verdict.decision == "fail"
    assert verdict.lower is not None
    assert verdict.lower > 0.005
    assert verdict.p_value is not None
    assert verdict.p_value < 1e-6
    assert judgement.recommendation == "rollback"
    assert "error_rate" in judgement.reason


def test_direction_matters_slower_fails_faster_passes() -> None:
    """Latency lower is better: a canary 40 % slower fails, one 40 % faster passes; accuracy
    higher is better: a drop of 5 pp fails, a rise of 5 pp passes."""
    rng = np.random.default_rng(3)
    latency = MetricRule.latency("latency", max_ratio_rise=0.10)
    slower = Judge.verdict(latency, Arms(_log_latency(rng, 3_000, 1.4), _log_latency(rng, 3_000)), window=WINDOW)
    faster = Judge.verdict(latency, Arms(_log_latency(rng, 3_000, 0.6), _log_latency(rng, 3_000)), window=WINDOW)
    assert (slower.decision, faster.decision) == ("fail", "pass")
    assert slower.relative_effect == pytest.approx(0.4, abs=0.05)
    accuracy = MetricRule.accuracy("accuracy", max_drop=0.02)
    worse = Judge.verdict(accuracy, Arms(Proportion(5_000, 4_250), Proportion(5_000, 4_500)), window=WINDOW)
    better = Judge.verdict(accuracy, Arms(Proportion(5_000, 4_750), Proportion(5_000, 4_500)), window=WINDOW)
    assert (worse.decision, better.decision) == ("fail", "pass")


def test_score_shift_either_way_fails_and_holds_when_so_declared() -> None:
    """A two-sided score rule fails on a shift up or down beyond its tolerance; declared
    on_fail="hold", the recommendation is hold, not rollback."""
    rng = np.random.default_rng(4)
    rules = [MetricRule.score_shift("score", max_shift=0.02, on_fail="hold")]
    for shift in (0.08, -0.08):
        arms = Arms(Moments.of(rng.beta(2, 5, 4_000) + shift), Moments.of(rng.beta(2, 5, 4_000)))
        judgement = Judge(rules).judge({"score": arms}, window=WINDOW)
        assert judgement.verdicts[0].decision == "fail"
        assert judgement.recommendation == "hold"


@pytest.mark.parametrize(
    ("lower", "upper", "direction", "expected"),
    [
        (0.006, 0.02, "lower_is_better", "fail"),
        (-0.01, 0.005, "lower_is_better", "pass"),
        (-0.01, 0.006, "lower_is_better", "inconclusive"),
        (-0.02, -0.006, "higher_is_better", "fail"),
        (-0.005, 0.01, "higher_is_better", "pass"),
        (-0.006, 0.01, "higher_is_better", "inconclusive"),
        (0.006, 0.01, "two_sided", "fail"),
        (-0.01, -0.006, "two_sided", "fail"),
        (-0.005, 0.005, "two_sided", "pass"),
        (-0.006, 0.004, "two_sided", "inconclusive"),
    ],
)
def test_decision_table(lower: float, upper: float, direction: str, expected: str) -> None:
    """Each row of the decision table in stalwart.rollout.judge's docstring, tolerance 0.005."""
    assert decide(lower, upper, 0.005, direction) == expected  # type: ignore[arg-type]


def _verdict(decision: str) -> Verdict:
    return Verdict(
        metric="m", decision=decision, reason="", method="", direction="lower_is_better",  # type: ignore[arg-type]
        tolerance=0.01, alpha=0.05, min_n=2, n_canary=0, n_primary=0, window=WINDOW,
    )


@pytest.mark.parametrize(
    ("cases", "expected"),
    [
        ([("rollback", True, "fail"), ("hold", True, "fail")], "rollback"),
        ([("rollback", True, "pass"), ("hold", True, "fail")], "hold"),
        ([("rollback", True, "pass"), ("rollback", False, "inconclusive")], "promote"),
        ([("rollback", True, "pass"), ("rollback", True, "inconclusive")], "continue"),
        ([("rollback", False, "fail"), ("rollback", True, "pass")], "rollback"),
    ],
)
def test_recommendation_table(cases: list[tuple[str, bool, str]], expected: str) -> None:
    """Each row of RECOMMENDATIONS in order: a rollback failure beats a hold failure, which
    beats promotion; an unrequired rule can still roll back but never blocks promotion."""
    judged = [
        (MetricRule.rate(f"m{i}", max_rise=0.01, on_fail=on_fail, required=required), _verdict(decision))
        for i, (on_fail, required, decision) in enumerate(cases)
    ]
    assert next(rec for _, test, rec in RECOMMENDATIONS if test(judged)) == expected


def test_verdicts_serialise_for_the_audit_log() -> None:
    """A judgement is plain JSON with the window in ISO 8601 and every verdict's numbers."""
    judgement = Judge(_rules()).judge(_good(np.random.default_rng(5), 1_000), window=WINDOW)
    data = msgspec.json.decode(msgspec.json.encode(judgement.to_dict()))
    assert data["window"] == {"start": "2024-05-01T12:00:00Z", "end": "2024-05-01T13:00:00Z"}
    first = data["verdicts"][0]
    assert {"metric", "decision", "effect", "relative_effect", "lower", "upper", "p_value", "statistic",
            "n_canary", "n_primary", "tolerance", "window"} <= set(first)
    assert first["n_canary"] == 1_000


def test_bad_rules_and_observations_are_config_errors_naming_them() -> None:
    """Mistakes fail at once and name the rule and field: an unknown direction, a negative
    tolerance, a zero tolerance without a scale, a repeated name, data for a metric without
    a rule, rates given to a mean rule."""
    with pytest.raises(ConfigError, match="'error_rate': direction"):
        MetricRule(name="error_rate", kind="proportion", tolerance=0.01, direction="up")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'e': tolerance"):
        MetricRule.rate("e", max_rise=-0.01)
    with pytest.raises(ConfigError, match="'e': scale"):
        MetricRule.rate("e", max_rise=0.0)
    with pytest.raises(ConfigError, match=r"'e'.*alpha"):
        MetricRule.rate("e", max_rise=0.01, alpha="high")
    with pytest.raises(ConfigError, match="repeated: e"):
        Judge([MetricRule.rate("e", max_rise=0.01), MetricRule.rate("e", max_rise=0.02)])
    judge = Judge([MetricRule.latency("latency", max_ratio_rise=0.1)])
    with pytest.raises(ConfigError, match="without a rule: errors"):
        judge.judge({"errors": Arms(Proportion(), Proportion())}, window=WINDOW)
    with pytest.raises(ConfigError, match="needs Moments"):
        judge.judge({"latency": Arms(Proportion(10, 1), Proportion(10, 1))}, window=WINDOW)


def test_judge_numbers_are_the_simulated_ones() -> None:
    """The Judge's interval and p-value on one look equal the vectorised functions the
    simulations in test_sequential.py measure, so their error rates are the Judge's."""
    from stalwart.rollout.sequential import always_valid_p, half_width, two_proportions

    rule = MetricRule.rate("error_rate", max_rise=0.005)
    rng = np.random.default_rng(6)
    for _ in range(50):
        n_c, n_p = (int(x) for x in rng.integers(200, 20_000, 2))
        x_c, x_p = int(rng.binomial(n_c, 0.02)), int(rng.binomial(n_p, 0.02))
        verdict = Judge.verdict(rule, Arms(Proportion(n_c, x_c), Proportion(n_p, x_p)), window=WINDOW)
        estimate, variance = two_proportions(x_c, n_c, x_p, n_p)
        width = float(half_width(variance, 0.005, 0.05))
        assert verdict.lower == pytest.approx(float(estimate) - width, rel=1e-12, abs=1e-15)
        assert verdict.upper == pytest.approx(float(estimate) + width, rel=1e-12, abs=1e-15)
        assert verdict.p_value == pytest.approx(float(always_valid_p(estimate, variance, 0.005)), rel=1e-12)
