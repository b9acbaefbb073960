"""A metric source for alert tests, built from numpy data: timestamped serving rows per
column, scored over a window against a reference with scipy (test data, not a stand-in for
shipped code; the server's sources are the drift and quality modules)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from scipy import stats

from stalwart.monitoring.alerts import Notification, Observation

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class StreamSource:
    """``mean`` (of the window's values), ``ks`` (two-sample KS statistic and p-value against
    the reference), per column, over rows added with :meth:`add`."""

    def __init__(self, reference: Mapping[str, npt.ArrayLike] | None = None) -> None:
        self.reference = {c: np.asarray(v, dtype=np.float64) for c, v in (reference or {}).items()}
        self._batches: list[tuple[float, dict[str, npt.NDArray[np.float64]]]] = []
        self.broken = False

    def add(self, when: datetime, rows: Mapping[str, npt.ArrayLike]) -> None:
        self._batches.append((when.timestamp(), {c: np.asarray(v, dtype=np.float64) for c, v in rows.items()}))

    def values(self, deployment: str, metric: str, window_seconds: float, now: datetime) -> Mapping[str, Observation]:
        if self.broken:
            raise ConnectionError("the profile store is down")
        hi = now.timestamp()
        lo = hi - window_seconds
        columns: dict[str, list[npt.NDArray[np.float64]]] = {}
        for stamp, rows in self._batches:
            if lo < stamp <= hi:
                for column, values in rows.items():
                    columns.setdefault(column, []).append(values)
        out: dict[str, Observation] = {}
        for column, parts in columns.items():
            window = np.concatenate(parts)
            if metric == "mean":
                out[column] = Observation(float(window.mean()), rows=window.size)
            elif metric == "ks":
                result = stats.ks_2samp(self.reference[column], window)
                out[column] = Observation(float(result.statistic), float(result.pvalue), rows=window.size)
            else:
                raise KeyError(f"unknown metric {metric!r}")
        return out


class Inbox:
    """A notifier that keeps what it is given (what a receiver would see)."""

    def __init__(self) -> None:
        self.received: list[Notification] = []

    def notify(self, notifications: Sequence[Notification]) -> None:
        self.received.extend(notifications)

    def statuses(self) -> list[tuple[str, str, str]]:
        return [(n.alert, n.labels["column"], n.status) for n in self.received]
