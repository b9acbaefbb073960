"""``stalwart validate DATA --model NAME[:VERSION]``: check a data file against a schema.

Reads CSV or Parquet in chunks (a progress bar on stderr for large files), validates each
chunk with the same compiled validator the server uses, and prints violations by feature
and rule with example rows. Exits with status 1 when a value breaks a rule whose policy is
``reject`` (so CI can gate a batch job or a retraining run on it). ``--compare`` also
profiles the file and sets it beside the schema: ranges, nulls, new categories, medians,
columns added or gone, which is what to look at before retraining on new data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from stalwart.cli.datafiles import progress_bar, read_chunks
from stalwart.cli.output import console, fail
from stalwart.cli.schemas import guarded, open_registry, parse_ref

if TYPE_CHECKING:
    from stalwart.monitoring.profiles import Profile
    from stalwart.validation.schema import Schema

__all__ = ["Summary", "policy_pairs", "validate_command"]

_RULE_ORDER = ("missing", "type", "null", "not_finite", "range", "category", "length")


@dataclass
class Summary:
    """Violations of a whole file, added up chunk by chunk."""

    examples_per_rule: int = 3
    rows: int = 0
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[tuple[int | None, Any]]] = field(default_factory=dict)

    def add(self, report: Any, offset: int) -> None:
        for (feature, rule, action), n in report.counts.items():
            key = (feature, rule, action)
            # A missing column is one finding, not one per chunk.
            self.counts[key] = 1 if rule == "missing" else self.counts.get(key, 0) + n
        for key, pairs in report.examples.items():
            kept = self.examples.setdefault(key, [])
            for row, value in pairs:
                if len(kept) >= self.examples_per_rule:
                    break
                kept.append((None if row is None else row + offset, value))

    @property
    def rejected(self) -> int:
        return sum(n for (_f, _r, action), n in self.counts.items() if action == "rejected")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@guarded
def validate_command(
    data: Annotated[Path, typer.Argument(help=".csv or .parquet file", exists=True, dir_okay=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="NAME[:VERSION] whose schema to check against")],
    revision: Annotated[int | None, typer.Option(help="schema revision (default: the active one)")] = None,
    schema_file: Annotated[Path | None, typer.Option("--schema", help="check against this schema file instead", exists=True, dir_okay=False)] = None,
    policy: Annotated[list[str], typer.Option(help="FEATURE=POLICY override, repeatable")] = [],  # noqa: B006
    default_policy: Annotated[str | None, typer.Option(help="policy for features without their own")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="also compare the data's profile with the schema")] = False,
    chunk_rows: Annotated[int, typer.Option(help="rows validated at a time")] = 100_000,
    examples: Annotated[int, typer.Option(help="example values shown per feature and rule")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary instead of tables")] = False,
) -> None:
    """Validate a data file against a model's schema; exit 1 if a reject rule is broken."""
    from stalwart.monitoring.profiles import Profile
    from stalwart.validation.policy import PolicyOverrides
    from stalwart.validation.schema import Schema
    from stalwart.validation.validator import Validator

    registry = open_registry()
    try:
        name, version = parse_ref(registry, model)
        ref = f"{name}:{version}"
        if schema_file is not None:
            schema = Schema.from_file(schema_file)
            source = str(schema_file)
        else:
            rev = registry.schemas.get(name, version, revision)
            schema, source = rev.schema, f"revision {rev.revision} ({rev.source})"
    finally:
        registry.db.dispose()
    overrides = PolicyOverrides.parse(
        {"default": default_policy, "features": policy_pairs(policy)}, source="--policy/--default-policy"
    )
    validator = Validator(schema, policies=overrides, max_violations=0)
    text_columns = tuple(n for n, f in schema.features.items() if f.kind in ("categorical", "string"))
    summary = Summary(examples_per_rule=examples)
    profile = Profile() if compare else None
    with progress_bar() as progress:
        for frame, done, total in read_chunks(data, chunk_rows, text_columns=text_columns):
            columns = {str(c): _column(frame[c]) for c in frame.columns}
            _fixed, report = validator.check(columns, len(frame))
            summary.add(report, summary.rows)
            summary.rows += len(frame)
            if profile is not None:
                profile.update(frame)
            progress.report(done, total)
    comparison = _compare(schema, profile) if profile is not None else None
    if as_json:
        console.out(json.dumps(_as_json(ref, source, summary, validator.policies, comparison), indent=2))
    else:
        _print(ref, source, summary, validator.policies, schema, comparison)
    if summary.rejected:
        raise typer.Exit(1)


def _column(series: Any) -> Any:
    from stalwart.monitoring.profiles import column_array

    return column_array(series)


def policy_pairs(values: list[str]) -> dict[str, str]:
    """`--policy FEATURE=POLICY` options as a mapping (fails on anything else)."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            fail(f"--policy takes FEATURE=POLICY, got {value!r}")
        pairs[key] = val
    return pairs


def _rows(summary: Summary, policies: Mapping[str, str], order: list[str]) -> list[dict[str, Any]]:
    position = {n: i for i, n in enumerate(order)}
    rows: list[dict[str, Any]] = []
    for (feature, rule, action), n in summary.counts.items():
        rows.append(
            {
                "feature": feature,
                "rule": rule,
                "policy": policies.get(feature, ""),
                "action": action,
                "count": n,
                "examples": [
                    {"row": r, "value": v} for r, v in summary.examples.get((feature, rule), [])
                ],
            }
        )
    rows.sort(key=lambda r: (position.get(str(r["feature"]), 1 << 30), _RULE_ORDER.index(str(r["rule"]))))
    return rows


def _print(
    ref: str,
    source: str,
    summary: Summary,
    policies: Mapping[str, str],
    schema: Schema,
    comparison: list[dict[str, Any]] | None,
) -> None:
    console.print(f"validated {summary.rows} rows against model {ref}'s schema, {source}")
    if summary.total:
        table = Table("feature", "rule", "policy", "action", "count", "examples (row: value)")
        for row in _rows(summary, policies, list(schema.features)):
            shown = ", ".join(
                "all rows" if e["row"] is None else f"{e['row']}: {e['value']!r}" for e in row["examples"]
            )
            style = "bold red" if row["action"] == "rejected" else ""
            table.add_row(
                row["feature"], row["rule"], row["policy"], f"[{style}]{row['action']}[/]" if style else row["action"],
                str(row["count"]), shown,
            )
        console.print(table)
    if comparison is not None:
        _print_comparison(comparison)
    if summary.rejected:
        console.print(
            f"[bold red]{summary.rejected} value(s) break a reject rule[/]: requests like these "
            f"would get a 422"
        )
    elif summary.total:
        console.print(f"[yellow]{summary.total} value(s) broke a rule; none under reject[/]")
    else:
        console.print(f"[green]all {summary.rows} rows pass[/]")


def _compare(schema: Schema, profile: Profile) -> list[dict[str, Any]]:
    """Each schema feature beside the new data's profile, then the columns only one has."""
    out: list[dict[str, Any]] = []
    for name, feature in schema.features.items():
        fp = profile.features.get(name)
        if fp is None:
            out.append({"feature": name, "status": "missing from the data"})
            continue
        entry: dict[str, Any] = {
            "feature": name,
            "status": "",
            "kind": feature.kind,
            "nulls_schema": feature.null_fraction,
            "nulls_data": round(fp.missing_fraction, 6),
        }
        notes: list[str] = []
        if feature.kind in ("numeric", "integer"):
            quantiles = feature.quantiles or {}
            entry.update(
                range_schema=[feature.min, feature.max],
                range_data=[fp.min, fp.max],
                median_schema=quantiles.get("p50"),
                median_data=fp.quantile(0.5),
            )
            if (fp.min is not None and feature.min is not None and fp.min < feature.min) or (
                fp.max is not None and feature.max is not None and fp.max > feature.max
            ):
                notes.append("beyond the training range")
            shift = _median_shift(quantiles, entry["median_data"])
            if shift is not None and abs(shift) >= 0.25:
                notes.append(f"median moved {shift:+.2f} IQR")
        elif feature.kind == "categorical":
            known = set(feature.categories or {})
            new = [c for c in fp.frequencies() if c not in known]
            entry.update(new_categories=len(new), new_examples=new[:5])
            if new:
                notes.append(f"{len(new)} new categories")
        if not feature.nullable and fp.nulls + fp.nan:
            notes.append("nulls where training had none")
        if fp.kind not in ("unknown", _profile_kind(feature.kind)) and not (
            fp.kind in ("numeric", "integer") and feature.kind in ("numeric", "integer")
        ):
            notes.append(f"type changed: the data holds {fp.kind} values")
        entry["status"] = "; ".join(notes)
        out.append(entry)
    for name in profile.features:
        if name not in schema.features:
            out.append({"feature": name, "status": "not in the schema"})
    return out


def _median_shift(quantiles: Mapping[str, float], median: float | None) -> float | None:
    """How far the median moved, in training interquartile ranges (None: cannot tell)."""
    p25, p50, p75 = quantiles.get("p25"), quantiles.get("p50"), quantiles.get("p75")
    if median is None or p25 is None or p50 is None or p75 is None or p75 <= p25:
        return None
    return (median - p50) / (p75 - p25)


def _profile_kind(kind: str) -> str:
    return "string" if kind in ("categorical", "string") else kind


def _print_comparison(comparison: list[dict[str, Any]]) -> None:
    table = Table("feature", "schema (training)", "data", "nulls", "note", title="compared with the schema")
    for entry in comparison:
        if "kind" not in entry:
            table.add_row(entry["feature"], "", "", "", f"[yellow]{entry['status']}[/]")
            continue
        nulls = f"{entry['nulls_schema']:.1%} -> {entry['nulls_data']:.1%}"
        note = entry["status"]
        if "range_schema" in entry:
            lo, hi = entry["range_schema"]
            dlo, dhi = entry["range_data"]
            schema_text = f"[{_num(lo)}, {_num(hi)}] median {_num(entry['median_schema'])}"
            data_text = f"[{_num(dlo)}, {_num(dhi)}] median {_num(entry['median_data'])}"
        elif "new_categories" in entry:
            schema_text = entry["kind"]
            data_text = f"{entry['new_categories']} new categories"
            if entry["new_examples"]:
                data_text += f" ({', '.join(map(repr, entry['new_examples']))})"
        else:
            schema_text = data_text = entry["kind"]
        table.add_row(entry["feature"], schema_text, data_text, nulls, f"[yellow]{note}[/]" if note else "")
    console.print(table)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _as_json(
    ref: str,
    source: str,
    summary: Summary,
    policies: Mapping[str, str],
    comparison: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": ref,
        "schema": source,
        "rows": summary.rows,
        "violations": summary.total,
        "rejected": summary.rejected,
        "by_rule": _rows(summary, policies, list(policies)),
    }
    if comparison is not None:
        body["compare"] = comparison
    return body
