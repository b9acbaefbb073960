"""The shadow report: each shadow of a deployment against the answers clients got.

:func:`build_shadow_report` reads ``shadow_pairs`` over a window
(:func:`~stalwart.rollout.shadow_store.read_pairs`: every replica and minute merged) and
returns a JSON-safe document: per shadow, the model versions on each side, the paired
report (:meth:`~stalwart.rollout.paired.PairedReport.to_dict`: its ``summary`` for readers,
its ``state`` to merge again), the distribution of score differences as a histogram, and
counts over time (at most :data:`MAX_TIME_BINS` bins). :func:`render_shadow_html` turns the
document into one self-contained page in the monitoring report's style
(:mod:`stalwart.monitoring.report_html`, plots by :mod:`stalwart.monitoring.report_plots`):
agreement and the confusion table, McNemar's tests, the score differences and the paired
t-test, latency side by side, errors, and pairs and agreement over time.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

from stalwart._version import __version__
from stalwart.errors import ConfigError
from stalwart.monitoring import report_figures as plots
from stalwart.monitoring import report_markup as h
from stalwart.storage import Database

__all__ = ["FORMAT", "MAX_TIME_BINS", "build_shadow_report", "render_shadow_html", "shadow_sections"]

FORMAT = 1
MAX_TIME_BINS = 240
"""Points over time in a report: minutes are summed into wider bins past this."""
HISTOGRAM_BINS = 30
_MAX_HEATMAP_CLASSES = 12  # the confusion heatmap's rows and columns; the table lists them all


def build_shadow_report(
    database: Database,
    deployment: str,
    *,
    since: dt.datetime,
    until: dt.datetime,
    shadow: str | None = None,
) -> dict[str, Any]:
    """The report document of ``deployment``'s shadows (or only ``shadow``) over
    ``[since, until)`` (aware datetimes); see the module docstring."""
    from stalwart.rollout.shadow_store import read_pairs

    if since.tzinfo is None or until.tzinfo is None:
        raise ConfigError("since and until must be aware datetimes (with a timezone)")
    found = read_pairs(database, deployment, since=since, until=until, shadow=shadow)
    shadows = []
    for name in sorted(found):
        pairs = found[name]
        histogram = pairs.report.score_difference_histogram(HISTOGRAM_BINS)
        shadows.append({
            "name": name,
            "models": pairs.models,
            "report": pairs.report.to_dict(),
            "histogram": None if histogram is None else {"edges": histogram[0], "shares": histogram[1]},
            "over_time": _over_time([m.to_dict() for m in pairs.minutes], since, until),
        })
    return {
        "format": FORMAT,
        "deployment": deployment,
        "shadow": shadow,
        "since": _iso(since),
        "until": _iso(until),
        "generated_at": _iso(dt.datetime.now(dt.UTC)),
        "shadows": shadows,
    }


def render_shadow_html(document: Mapping[str, Any]) -> str:
    """The report document as one HTML page that fetches nothing (needs matplotlib:
    ``pip install 'stalwart[report]'``)."""
    if document.get("format") != FORMAT:
        raise ConfigError(f"shadow report format {document.get('format')!r} is not {FORMAT}; build it again with this release")
    since, until = _when(document["since"]), _when(document["until"])
    deployment = str(document["deployment"])
    shadows: Sequence[Mapping[str, Any]] = document["shadows"]
    nav = "".join(f'<a href="#shadow-{h.escape(s["name"])}">{h.escape(s["name"])}</a>' for s in shadows)
    parts = [
        f"<header><h1>Shadow report <span class=name>{h.escape(deployment)}</span></h1>"
        f"<p class=window>{h.escape(h.time(since))} → {h.escape(h.time(until))} · "
        f"{len(shadows)} shadow{'s' if len(shadows) != 1 else ''}</p><nav>{nav}</nav></header>"
    ]
    parts.extend(shadow_sections(document))
    parts.append(
        f"<footer>Stalwart {h.escape(__version__)} · generated {h.escape(h.time(_when(document['generated_at'])))} · "
        "self-contained: this file fetches nothing</footer>"
    )
    return h.page(f"Shadow report: {deployment}", "\n".join(parts))


def shadow_sections(document: Mapping[str, Any]) -> list[str]:
    """The page's sections as markup: one per shadow (its id ``shadow-<name>``), or one that
    says why there is nothing to compare. :func:`render_shadow_html` and the console's
    shadow page show the same."""
    since, until = _when(document["since"]), _when(document["until"])
    shadows: Sequence[Mapping[str, Any]] = document["shadows"]
    if not shadows:
        return [
            "<section><h2>No pairs</h2><p class=empty>No shadow answered a request of this deployment in this "
            "window: is a shadow declared (Deployment(shadows=...)), and did the server flush its pairs?</p></section>"
        ]
    return [_shadow_section(shadow, i, (since, until)) for i, shadow in enumerate(shadows)]


# --- the document ----------------------------------------------------------------------


def _over_time(minutes: list[dict[str, Any]], since: dt.datetime, until: dt.datetime) -> list[dict[str, Any]]:
    """Minutes summed into at most :data:`MAX_TIME_BINS` bins of whole minutes."""
    span = max(60.0, until.timestamp() - since.timestamp())
    width = 60 * max(1, math.ceil(span / 60 / MAX_TIME_BINS))
    bins: dict[int, dict[str, Any]] = {}
    for minute in minutes:
        start = int(minute["start"]) // width * width
        into = bins.get(start)
        if into is None:
            bins[start] = {**minute, "start": start}
            continue
        for key, value in minute.items():
            if key != "start":
                into[key] += value
    out = []
    for start in sorted(bins):
        b = bins[start]
        out.append({
            "start": _iso(dt.datetime.fromtimestamp(start, dt.UTC)),
            "seconds": width,
            "pairs": b["pairs"],
            "agreement": b["agreed"] / b["labelled"] if b["labelled"] else None,
            "shadow_error_rate": b["errors_shadow"] / b["pairs"] if b["pairs"] else None,
            "primary_error_rate": b["errors_primary"] / b["pairs"] if b["pairs"] else None,
            "difference_mean": b["difference_sum"] / b["scored"] if b["scored"] else None,
        })
    return out


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- the page --------------------------------------------------------------------------


def _shadow_section(shadow: Mapping[str, Any], index: int, window: tuple[dt.datetime, dt.datetime]) -> str:
    name = str(shadow["name"])
    summary: Mapping[str, Any] = shadow["report"]["summary"]
    models: Mapping[str, Mapping[str, int]] = shadow["models"]
    classes, scores, errors, latency = summary["classes"], summary["scores"], summary["errors"], summary["latency"]
    diff = scores["difference"]
    prefix = f"s{index}-"
    parts = [f"<section id=\"shadow-{h.escape(name)}\"><h2>Shadow <span class=name>{h.escape(name)}</span></h2>"]
    parts.append(
        f"<p class=explain>Compared: {_models(models.get('primary', {}))} (the answers clients got) against "
        f"{_models(models.get('shadow', {}))} (the shadow), on the same requests.</p>"
    )
    worse = errors["shadow_rate"] is not None and errors["primary_rate"] is not None and errors["shadow_rate"] > errors["primary_rate"]
    cards = [
        h.card("pairs", f"{summary['pairs']:,}", f"{summary['answered']:,} answered by both", False),
        h.card("agreement", h.pct(classes["agreement"]), f"{classes['labelled']:,} pairs with a class each", False),
        h.card(
            "mean score difference", h.num(diff["mean"]),
            "no scores" if diff["n"] == 0 else f"95% CI {h.num(diff['ci_low'])} to {h.num(diff['ci_high'])}", False,
        ),
        h.card("errors: shadow / primary", f"{h.pct(errors['shadow_rate'])} / {h.pct(errors['primary_rate'])}",
               f"McNemar p {h.p_value(errors['test']['p_value'])}", worse),
    ]
    parts.append(f"<div class=cards>{''.join(cards)}</div>")
    parts.append(_classes(classes, prefix))
    parts.append(_scores(shadow.get("histogram"), scores, prefix))
    parts.append(_latency(latency, prefix))
    parts.append(_errors(errors))
    parts.append(_over_time_section(shadow["over_time"], window, prefix))
    parts.append("</section>")
    return "".join(parts)


def _models(counts: Mapping[str, int]) -> str:
    if not counts:
        return "<i>unknown</i>"
    return ", ".join(f"<b>{h.escape(ref)}</b> ({n:,})" for ref, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _classes(classes: Mapping[str, Any], prefix: str) -> str:
    parts = ["<h3>Classes</h3>"]
    labels: list[str] = classes["labels"]
    if not classes["labelled"]:
        parts.append("<p class=empty>No pair with a class on both sides (a regression, or no answers).</p>")
        return "".join(parts)
    confusion: list[list[int]] = classes["confusion"]
    svg = _confusion_plot(labels, confusion)
    shown = min(len(labels), _MAX_HEATMAP_CLASSES)
    parts.append(_sized(h.figure(svg, f"{prefix}confusion", "Rows: the class clients got; columns: the shadow's class. "
                                 "Diagonal: agreement (shade: the share of each row)."), 260 + 60 * shown))
    headers = ["client \\ shadow", *labels]
    rows = [
        f"<tr><td class=name>{h.escape(label)}</td>"
        + "".join(f"<td class=num>{n:,}</td>" for n in row)
        + "</tr>"
        for label, row in zip(labels, confusion, strict=True)
    ]
    parts.append(h.table(headers, rows))
    tests = classes["tests"]
    if tests:
        rows = [
            f"<tr><td class=name>{h.escape(t['class'])}</td><td class=num>{t['b']:,}</td><td class=num>{t['c']:,}</td>"
            f"<td>{h.escape(t['method'])}</td><td class=num>{h.p_value(t['p_value'])}</td><td class=num>{h.p_value(t['p_adjusted'])}</td></tr>"
            for t in tests
        ]
        parts.append(
            "<p class=explain>McNemar's test per class: only the client's answer said it (b) against only the shadow's "
            "(c); p adjusted by Bonferroni over the classes.</p>"
            + h.table(["class", "only client (b)", "only shadow (c)", "method", "p", "p adjusted"], rows)
        )
    return "".join(parts)


def _scores(histogram: Mapping[str, Any] | None, scores: Mapping[str, Any], prefix: str) -> str:
    parts = ["<h3>Scores: shadow minus client</h3>"]
    diff = scores["difference"]
    if not scores["scored"] or histogram is None:
        parts.append("<p class=empty>No pair with a score on both sides.</p>")
        return "".join(parts)
    svg = _histogram_plot(histogram["edges"], histogram["shares"])
    parts.append(_sized(h.figure(svg, f"{prefix}differences", "The distribution of score differences (shadow minus client) "
                                 "over the pairs both scored; 0 is no difference."), 760))
    quantiles = diff["quantiles"]
    keys = [k for k in quantiles if k.startswith("p")]
    parts.append(h.table(["", *keys], [
        "<tr><td class=name>difference</td>" + "".join(f"<td class=num>{h.num(quantiles[k])}</td>" for k in keys) + "</tr>"
    ]))
    parts.append(
        f"<p>Mean score: client {h.num(scores['primary_mean'])}, shadow {h.num(scores['shadow_mean'])}; correlation "
        f"{h.num(scores['correlation'])}. Paired t-test on {diff['n']:,} differences: mean {h.num(diff['mean'])} "
        f"(95% CI {h.num(diff['ci_low'])} to {h.num(diff['ci_high'])}), t {h.num(diff['t'])}, p {h.p_value(diff['p_value'])}.</p>"
    )
    return "".join(parts)


def _latency(latency: Mapping[str, Mapping[str, Any]], prefix: str) -> str:
    parts = ["<h3>Latency</h3>"]
    primary, shadow = latency["primary"], latency["shadow"]
    if not primary["count"] and not shadow["count"]:
        parts.append("<p class=empty>No latency recorded.</p>")
        return "".join(parts)
    svg = _latency_plot(primary, shadow)
    parts.append(_sized(h.figure(svg, f"{prefix}latency", "p50 and p99 of each side, in milliseconds: the client's answer "
                                 "(its variant's features and model) and the shadow's call (the same path, off the critical path)."), 460))
    rows = [
        f"<tr><td class=name>{side}</td><td class=num>{q['count']:,}</td><td class=num>{_ms(q['p50'])}</td><td class=num>{_ms(q['p99'])}</td></tr>"
        for side, q in (("client", primary), ("shadow", shadow))
    ]
    parts.append(h.table(["side", "requests", "p50 ms", "p99 ms"], rows))
    return "".join(parts)


def _errors(errors: Mapping[str, Any]) -> str:
    test = errors["test"]
    rows = [
        f"<tr><td class=name>client</td><td class=num>{errors['primary']:,}</td><td class=num>{h.pct(errors['primary_rate'])}</td></tr>",
        f"<tr><td class=name>shadow</td><td class=num>{errors['shadow']:,}</td><td class=num>{h.pct(errors['shadow_rate'])}</td></tr>",
        f"<tr><td class=name>both</td><td class=num>{errors['both']:,}</td><td class=num>—</td></tr>",
    ]
    return (
        "<h3>Errors</h3>"
        + h.table(["side", "failed", "rate"], rows)
        + f"<p>McNemar's test of who failed alone ({test['b']:,} client only, {test['c']:,} shadow only): "
        f"p {h.p_value(test['p_value'])} ({h.escape(test['method'])}). A shadow's failures include its calls that timed "
        "out; calls dropped before they ran (a full queue, a shadow not taking work) are not pairs: see "
        "<code>stalwart_shadow_dropped_total</code>.</p>"
    )


def _over_time_section(over_time: Sequence[Mapping[str, Any]], window: tuple[dt.datetime, dt.datetime], prefix: str) -> str:
    if not over_time:
        return "<h3>Over time</h3><p class=empty>No pairs over time.</p>"
    svg = _over_time_plot(over_time, window)
    width = int(over_time[0]["seconds"]) // 60
    return "<h3>Over time</h3>" + h.figure(
        svg, f"{prefix}over-time", f"Pairs per {width} min bin, and the agreement and the shadow's error rate in each."
    )


def _sized(figure: str, max_width: int) -> str:
    # The page's CSS draws every plot at its column's full width: a small one is capped, so
    # a 3-class heatmap is not drawn a page high.
    return f'<div style="max-width:{max_width}px">{figure}</div>'


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else h.num(seconds * 1000)


# --- plots (matplotlib, in the monitoring report's style) ----------------------------------


def _confusion_plot(labels: list[str], confusion: list[list[int]]) -> str:
    shown = labels[:_MAX_HEATMAP_CLASSES]
    counts = [row[: len(shown)] for row in confusion[: len(shown)]]
    shares = [[n / max(1, sum(row)) for n in row] for row in counts]
    size = 1.6 + 0.45 * len(shown)

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                ax.text(j, i, f"{n:,}", ha="center", va="center", color="white" if shares[i][j] > 0.6 else "#111827", fontsize=7)
        ticks = range(len(shown))
        ax.set_xticks(ticks, [_clip(label) for label in shown], rotation=30, ha="right", rotation_mode="anchor")
        ax.set_yticks(ticks, [_clip(label) for label in shown])
        ax.set_xlabel("shadow")
        ax.set_ylabel("client")
        fig.tight_layout(pad=0.5)

    return plots.render_svg((min(9.0, size + 1.2), min(8.0, size)), draw)


def _histogram_plot(edges: list[float], shares: list[float]) -> str:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.stairs(shares, edges, fill=True, color=plots.COLORS["current"], alpha=0.7)
        ax.axvline(0.0, color=plots.COLORS["threshold"], linestyle="--", linewidth=0.8)
        ax.set_xlabel("shadow minus client score")
        ax.set_ylabel("share of pairs")
        fig.tight_layout(pad=0.5)

    return plots.render_svg((6.5, 2.4), draw)


def _latency_plot(primary: Mapping[str, Any], shadow: Mapping[str, Any]) -> str:
    quantiles = ("p50", "p99")

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for k, (label, side, color) in enumerate((("client", primary, plots.COLORS["reference"]), ("shadow", shadow, plots.COLORS["current"]))):
            values = [(side[q] or 0.0) * 1000 for q in quantiles]
            ax.bar([i + (k - 0.5) * 0.38 for i in range(len(quantiles))], values, width=0.36, color=color, label=label)
        ax.set_xticks(range(len(quantiles)), quantiles)
        ax.set_ylabel("ms")
        ax.legend(loc="upper left")
        fig.tight_layout(pad=0.5)

    return plots.render_svg((4.0, 2.4), draw)


def _over_time_plot(over_time: Sequence[Mapping[str, Any]], window: tuple[dt.datetime, dt.datetime]) -> str:
    times = [_when(b["start"]).replace(tzinfo=None) for b in over_time]
    width = dt.timedelta(seconds=int(over_time[0]["seconds"])) * 0.9

    def draw(fig: Any) -> None:
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.3))
        top.bar(times, [b["pairs"] for b in over_time], width=width, align="edge", color=plots.COLORS["reference"])
        top.set_ylabel("pairs")
        centres = [t + width / 2 for t in times]
        bottom.plot(centres, [_nan(b["agreement"]) for b in over_time], color=plots.COLORS["current"], marker="o",
                    markersize=2.5, linewidth=1.2, label="agreement")
        bottom.plot(centres, [_nan(b["shadow_error_rate"]) for b in over_time], color=plots.COLORS["drifted"], marker="o",
                    markersize=2, linewidth=1.0, label="shadow error rate")
        bottom.set_ylim(-0.02, 1.02)
        bottom.set_ylabel("share")
        bottom.set_xlabel("UTC")
        bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        plots.time_axis(bottom, window)
        fig.tight_layout(pad=0.5)

    return plots.render_svg((10.5, 3.4), draw)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _clip(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
