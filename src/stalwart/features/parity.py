"""The parity check: the offline and the online path, on the same entities and times.

Both paths share one engine, so what parity catches is everything around it: a source
whose online copy differs from its offline data (an external lookup and its offline dump),
a table read differently by a point query and by a full scan (types, time zones, rows
that share a timestamp), a transform that is not a pure function of its inputs.

Samples are real rows of the sources: half are asked at exactly a row's time (rows that
share a timestamp, the edge of "at or before"), half a random moment later, within the
widest window.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stalwart._optional import require
from stalwart.durations import NS
from stalwart.errors import ConfigError
from stalwart.features.online import OnlineFeatures
from stalwart.features.readers import SourceReader
from stalwart.features.training import build_training_set
from stalwart.project import FeatureRef, RequestField, Window
from stalwart.project.feature_sets import feature_sets_of, request_fields_of

__all__ = ["FeatureParity", "ParityReport", "check_parity"]


@dataclass
class FeatureParity:
    """How one feature compared over the samples."""

    name: str
    compared: int = 0
    mismatches: int = 0
    max_abs_diff: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ParityReport:
    samples: int
    rtol: float
    atol: float
    features: list[FeatureParity]

    @property
    def ok(self) -> bool:
        return all(f.mismatches == 0 for f in self.features)


def check_parity(
    refs: Sequence[FeatureRef | RequestField],
    readers: Mapping[str, SourceReader],
    *,
    samples: int = 200,
    seed: int = 0,
    rtol: float = 1e-9,
    atol: float = 1e-9,
    progress: Callable[[int], None] | None = None,
) -> ParityReport:
    """Compute ``refs`` for ``samples`` (entity, time) pairs both ways and compare."""
    pd = require("pandas", extra="features", purpose="the parity check")
    rng = np.random.default_rng(seed)
    sets = feature_sets_of(refs)
    if not sets:
        raise ConfigError("nothing to compare: the feature list has no feature set")
    anchor = sets[0]
    other_keys = {k for s in sets for k in s.entity.keys} - set(anchor.entity.keys)
    if other_keys:
        raise ConfigError(
            f"parity samples entities from '{anchor.name}', whose rows carry no "
            f"{', '.join(sorted(other_keys))}; check feature sets of other entities separately"
        )
    reader = readers[anchor.source.name]
    rows = reader.read_all(anchor.source_columns())
    if len(rows) == 0:
        raise ConfigError(f"source '{anchor.source.name}' has no rows to sample")
    picks = rng.integers(0, len(rows), size=samples)
    widest = max((f.window_ns for s in sets for f in s.features if isinstance(f, Window)), default=3600 * NS)
    offsets = np.where(rng.random(samples) < 0.5, 0, rng.integers(1, max(2, widest // NS), size=samples) * NS)
    times = rows.ts[picks] + offsets
    events: dict[str, Any] = {key: rows.keys[i][picks] for i, key in enumerate(anchor.entity.keys)}
    events["ts"] = pd.to_datetime(times, unit="ns", utc=True)
    for request_field in request_fields_of(refs):
        events[request_field.name] = _request_values(request_field, rows.columns, rng, samples)
    frame = pd.DataFrame(events)

    offline = build_training_set(frame, list(refs), timestamp="ts", readers=dict(readers))
    online = OnlineFeatures(refs, readers)
    report = [FeatureParity(ref.name) for ref in refs]
    keys = list(online.entity_keys)
    values_fields = [f.name for f in online.request_fields]
    for i in range(samples):
        entity = {k: _plain(frame[k].iloc[i]) for k in keys}
        values = [{name: _plain(frame[name].iloc[i]) for name in values_fields}] if values_fields else None
        resolved = asyncio.run(online.resolve([entity], values, as_of_ns=int(times[i])))
        for parity in report:
            _compare(parity, offline.frame[parity.name].iloc[i], resolved.columns[parity.name][0], rtol, atol, entity, int(times[i]))
        if progress is not None:
            progress(i + 1)
    return ParityReport(samples=samples, rtol=rtol, atol=atol, features=report)


def _request_values(request_field: RequestField, columns: Mapping[str, np.ndarray[Any, Any]], rng: np.random.Generator, n: int) -> np.ndarray[Any, Any]:
    """Plausible request values: drawn from a source column of the same name if there is
    one, otherwise from the field's type."""
    if request_field.name in columns and len(columns[request_field.name]):
        pool = columns[request_field.name]
        return np.asarray(pool[rng.integers(0, len(pool), size=n)], dtype=request_field.dtype)
    if request_field.type == "float":
        return rng.lognormal(3.0, 1.0, size=n)
    if request_field.type == "int":
        return rng.integers(0, 100, size=n)
    if request_field.type == "bool":
        return rng.random(n) < 0.5
    return np.asarray([f"value-{v}" for v in rng.integers(0, 5, size=n)], dtype=object)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _compare(parity: FeatureParity, offline: Any, online: Any, rtol: float, atol: float, entity: dict[str, Any], t: int) -> None:
    parity.compared += 1
    a, b = _plain(offline), _plain(online)
    if _is_missing(a) and _is_missing(b):
        return
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        diff = abs(float(a) - float(b))
        if math.isnan(diff):
            diff = math.inf
        parity.max_abs_diff = max(parity.max_abs_diff, diff)
        if diff <= atol + rtol * abs(float(b)):
            return
    elif a == b:
        return
    parity.mismatches += 1
    if len(parity.examples) < 3:
        parity.examples.append({"entity": entity, "as_of_ns": t, "offline": a, "online": b})


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
