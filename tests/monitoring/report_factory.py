"""Realistic monitoring report documents for the renderer's tests, generated with numpy.

A fraud deployment over 24 hourly buckets: ``amount`` triples in one merchant category
and online purchases double from hour 8 (drift), the others stay put; labels arrive for the first hours only (or
never); alerts fire, resolve and wait. The scores are computed from the generated samples
(PSI on the reference's deciles, Jensen-Shannon on categories, KS from scipy), so drifted
and stable features are drifted and stable for real.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from typing import Any

import numpy as np
from scipy import stats

SINCE = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
HOURS = 24
SHIFT_HOUR = 8
NASTY = "<script>alert('x')</script>"  # a feature, a category and an alert name
PSI_THRESHOLD = 0.1
JS_THRESHOLD = 0.1
KS_THRESHOLD = 0.05


def fraud_document(*, labels: bool = True, seed: int = 7) -> dict[str, Any]:
    """A whole document (as ``build_report`` returns it): drifted and stable features,
    quality with labels for the first half of the window (or none), alerts. A fresh copy
    each call (generated once per arguments), for tests to edit."""
    return json.loads(_fraud_json(labels, seed))


@functools.cache
def _fraud_json(labels: bool, seed: int) -> str:
    return json.dumps(_fraud(labels=labels, seed=seed))


def _fraud(*, labels: bool, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    reference = _sample(rng, 20_000, shifted=False)
    hours = [_sample(rng, 600, shifted=h >= SHIFT_HOUR) for h in range(HOURS)]
    window = {k: np.concatenate([h[k] for h in hours]) for k in reference}

    columns = [_column(name, reference[name], window[name]) for name in reference]
    drifted = [c for c in columns if c["drifted"]]
    share = len(drifted) / len(columns)
    until = SINCE + dt.timedelta(hours=HOURS)
    doc: dict[str, Any] = {
        "deployment": "fraud",
        "since": _iso(SINCE),
        "until": _iso(until),
        "generated_at": _iso(until + dt.timedelta(seconds=5)),
        "variants": [{"variant": "primary", "model": "fraud-lgbm", "version": 3}],
        "drift": {"share": share, "threshold": 0.5, "drifted": share >= 0.5, "columns": columns},
        "multivariate": {"auroc": _auroc(reference["amount"], window["amount"]), "threshold": 0.6, "drifted": True},
        "drift_over_time": [_drift_bucket(h, reference, hours[h]) for h in range(HOURS)],
        "distributions": {name: _distribution(reference[name], window[name]) for name in reference},
        "predictions_over_time": [],
        "quality": [],
        "skew": {
            "training_vs_serving": [{"column": c["column"], "method": c["method"], "score": c["score"], "drifted": c["drifted"]} for c in columns],
            "parity": [
                {"feature": "amount_sum_1h", "checked": 200, "mismatched": 3, "rate": 3 / 200},
                {"feature": "txn_count_1d", "checked": 200, "mismatched": 0, "rate": 0.0},
            ],
        },
        "alerts": [
            {"name": "amount-drift", "column": "amount", "severity": "critical", "state": "firing",
             "started_at": _iso(SINCE + dt.timedelta(hours=SHIFT_HOUR + 1)), "ended_at": None, "value": columns[0]["score"], "threshold": PSI_THRESHOLD},
            {"name": "category-drift", "column": "merchant_category", "severity": "warning", "state": "resolved",
             "started_at": _iso(SINCE + dt.timedelta(hours=3)), "ended_at": _iso(SINCE + dt.timedelta(hours=5)), "value": 0.12, "threshold": JS_THRESHOLD},
            {"name": NASTY, "column": NASTY, "severity": "info", "state": "pending",
             "started_at": _iso(until - dt.timedelta(minutes=20)), "ended_at": None, "value": 0.3, "threshold": 0.25},
        ],
    }
    for h in range(HOURS):
        bucket = SINCE + dt.timedelta(hours=h)
        p = hours[h]["score"]
        predicted = p >= 0.5
        doc["predictions_over_time"].append({
            "bucket": _iso(bucket), "count": int(p.size),
            "classes": {"fraud": int(predicted.sum()), "legit": int((~predicted).sum())},
            "score_quantiles": dict(zip(("p10", "p50", "p90"), map(float, np.quantile(p, [0.1, 0.5, 0.9])), strict=True)),
        })
        doc["quality"].append(_quality_bucket(rng, bucket, p, labelled=labels and h < HOURS // 2))
    return doc


def empty_document() -> dict[str, Any]:
    """A deployment that served nothing in the window: every section empty."""
    return {"deployment": "quiet", "since": _iso(SINCE), "until": _iso(SINCE + dt.timedelta(hours=HOURS)),
            "generated_at": _iso(SINCE + dt.timedelta(hours=HOURS))}


def _sample(rng: np.random.Generator, n: int, *, shifted: bool) -> dict[str, np.ndarray]:
    mix = [0.25, 0.15, 0.5, 0.05, 0.05] if shifted else [0.4, 0.2, 0.25, 0.1, 0.05]
    category = rng.choice(["grocery", "travel", "online", "fuel", NASTY], size=n, p=mix)
    amount = rng.lognormal(3.0, 0.8, size=n)
    if shifted:
        amount = np.where(category == "online", amount * 3, amount)
    age = rng.normal(40, 12, size=n).clip(18, 95)
    country = rng.choice(["FR", "DE", "ES", "IT"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    score = 1 / (1 + np.exp(-(np.log(amount) - 4.2) * 2.5))
    return {"amount": amount, "age": age, "merchant_category": category, "country": country, NASTY: rng.normal(0, 1, size=n), "score": score}


def _column(name: str, ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    base = {"column": name, "reference_count": int(ref.size), "current_count": int(cur.size),
            "missing_reference": 0.0, "missing_current": 0.0, "out_of_schema": 0.0, "mode": "exact", "error_bound": 0.0}
    if ref.dtype.kind in "US":
        score = _js(ref, cur)
        return {**base, "kind": "categorical", "method": "jensenshannon", "score": score, "p_value": None,
                "threshold": JS_THRESHOLD, "drifted": score >= JS_THRESHOLD}
    if name == "age":
        result = stats.ks_2samp(ref, cur)
        return {**base, "kind": "numeric", "method": "ks", "score": float(result.statistic), "p_value": float(result.pvalue),
                "threshold": KS_THRESHOLD, "drifted": float(result.pvalue) < KS_THRESHOLD}
    score = _psi(ref, cur)
    return {**base, "kind": "numeric", "method": "psi", "score": score, "p_value": None,
            "threshold": PSI_THRESHOLD, "drifted": score >= PSI_THRESHOLD, "mode": "sketch", "error_bound": 0.004}


def _edges(ref: np.ndarray) -> np.ndarray:
    return np.unique(np.quantile(ref, np.linspace(0, 1, 11)))


def _masses(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values.clip(edges[0], edges[-1]), bins=edges)
    return counts / max(counts.sum(), 1)


def _psi(ref: np.ndarray, cur: np.ndarray, eps: float = 1e-4) -> float:
    edges = _edges(ref)
    p, q = _masses(ref, edges) + eps, _masses(cur, edges) + eps
    return float(np.sum((q - p) * np.log(q / p)))


def _shares(values: np.ndarray) -> dict[str, float]:
    cats, counts = np.unique(values, return_counts=True)
    return {str(c): float(n / counts.sum()) for c, n in zip(cats, counts, strict=True)}


def _js(ref: np.ndarray, cur: np.ndarray) -> float:
    a, b = _shares(ref), _shares(cur)
    keys = sorted(set(a) | set(b))
    p = np.array([a.get(k, 0.0) for k in keys])
    q = np.array([b.get(k, 0.0) for k in keys])
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return float(np.sqrt((kl(p) + kl(q)) / 2))


def _distribution(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    if ref.dtype.kind in "US":
        return {"kind": "categorical", "reference": _shares(ref), "current": _shares(cur)}
    edges = _edges(ref)
    return {"kind": "numeric", "edges": edges.tolist(), "reference": _masses(ref, edges).tolist(), "current": _masses(cur, edges).tolist()}


def _drift_bucket(h: int, reference: dict[str, np.ndarray], hour: dict[str, np.ndarray]) -> dict[str, Any]:
    scores = {name: _column(name, reference[name], hour[name]) for name in reference}
    drifted = sum(1 for c in scores.values() if c["drifted"])
    return {"bucket": _iso(SINCE + dt.timedelta(hours=h)), "share": drifted / len(scores),
            "scores": {name: c["score"] for name, c in scores.items()}}


def _auroc(ref: np.ndarray, cur: np.ndarray) -> float:
    """The AUROC of telling window rows from reference rows by the value itself."""
    return float(stats.mannwhitneyu(cur, ref).statistic / (cur.size * ref.size))


def _quality_bucket(rng: np.random.Generator, bucket: dt.datetime, p: np.ndarray, *, labelled: bool) -> dict[str, Any]:
    predicted = p >= 0.5
    estimated = {"accuracy": float(np.mean(np.maximum(p, 1 - p))), "roc_auc": 0.5 + float(np.std(p))}
    out: dict[str, Any] = {"bucket": _iso(bucket), "predictions": int(p.size), "labelled": 0,
                           "realised": {}, "estimated": estimated, "label_delay_seconds": None}
    if labelled:
        truth = rng.random(p.size) < p  # calibrated: labels drawn from the scores
        take = rng.random(p.size) < 0.8
        delay = rng.exponential(3_600, size=int(take.sum()))
        out["labelled"] = int(take.sum())
        out["realised"] = {"accuracy": float(np.mean(predicted[take] == truth[take])),
                           "roc_auc": float(stats.mannwhitneyu(p[take][truth[take]], p[take][~truth[take]]).statistic
                                            / (truth[take].sum() * (~truth[take]).sum()))}
        out["label_delay_seconds"] = dict(zip(("p50", "p90", "p99"), map(float, np.quantile(delay, [0.5, 0.9, 0.99])), strict=True))
    return out


def _iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
