"""Live profiles: what a server answers, summarised per minute, stored, merged on read.

Each replica keeps one :class:`~stalwart.monitoring.profiles.Profile` per deployment,
variant, model version and minute of arrival, built from the columns of the requests it
answered, and writes it to ``profile_buckets`` once the minute is over. Readers merge the
rows of every replica and bucket they ask for (:func:`read_profiles`, :func:`merged_profile`):
the profiles are sketches, so N replicas, or 60 minutes, add up to the profile one process
would have built over the same requests (exactly for counts, min, max, nulls and
frequencies while a column has fewer than 768 distinct strings; quantiles within the KLL
sketch's rank error, about 1.3%).

**Column names** say where a column comes from, so that a deployment's features, a model's
inputs and its outputs never collide:

- ``feature:<name>``: a feature a deployment served to its model (``/v1``), by name;
- ``input:<tensor>``: an OIP input tensor as the model saw it (``/v2``); a matrix
  tensor's columns are ``input:<tensor>[<j>]``, j from 0, in the order of the training
  profile's features (its column order);
- ``output:<name>``: a model output (``output:predict``); a matrix output's columns are
  ``output:<name>[<j>]`` (``output:predict_proba[1]``: the score of class 1).

``/v1`` requests are profiled under their deployment and the variant that answered;
``/v2`` requests, which name a model and no deployment, under :func:`oip_deployment`
(``/v2/<model>``, which no declared deployment can be named) with variant ``""``.

**The request path** only appends to a bounded deque (:meth:`LiveProfiles.submit`, O(1);
when full the item is dropped and counted in ``stalwart_live_profiles_dropped_total``). A
worker thread drains it every ``flush_seconds``: turns each item into an
:class:`Observation` (the ``extract`` function given: the serving layer's, which knows
requests), groups them by deployment, variant, version and minute, concatenates each
column of a group into one numpy array and updates the group's profile once. That is what
keeps the cost per request to a few microseconds: the sketches' work is vectorised over
every request of a second, not done request by request.

**Writes.** A minute bucket is written when it is over (plus two seconds, for requests
answered after their minute ended), all open buckets on :meth:`LiveProfiles.close`. The
same delta is merged into the replica's hour and day rows in the same transaction: the
rollups are made **on write**, by each replica for its own rows, because then nothing
has to coordinate replicas or run a compaction, an hour or day row is complete as soon
as its minutes are written, and minute rows can be deleted by retention at any time
without losing anything. A bucket written twice by one replica (a request answered after
its minute was written) is merged into the stored row. Retention (minute rows 48 h, hour
rows 30 days, day rows kept, by default) runs hourly on every replica; deleting is
idempotent.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import Connection, and_, or_, select
from sqlalchemy.exc import SQLAlchemyError

from stalwart.durations import epoch_span
from stalwart.errors import ConfigError, StalwartError
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.metrics import gauge_function
from stalwart.monitoring.profiles import FeatureProfile, Profile, column_array
from stalwart.storage import Database
from stalwart.storage import tables as t

__all__ = [
    "GRANULARITIES",
    "Granularity",
    "LiveProfiles",
    "Observation",
    "Retention",
    "delete_expired",
    "merged_profile",
    "oip_deployment",
    "read_profiles",
]

Granularity = Literal["minute", "hour", "day"]
GRANULARITIES: dict[Granularity, int] = {"minute": 60, "hour": 3600, "day": 86400}  # seconds

T = TypeVar("T")
_log = get_logger("stalwart.profiles")
_GRACE_NS = 2_000_000_000  # a minute is written this long after it ends (late answers)
_DRAIN_AT = 1_000  # queued requests worth a drain before their minute ends (see _run)
_MAX_OPEN = 20_000  # open buckets kept while the database is down; the oldest go beyond
_MAX_BUCKETS_READ = 100_000  # buckets one read may return
_RETENTION_EVERY = 3600.0
_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
_LOG_EVERY = 10.0


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a µs per request
class Observation:
    """One answered request's columns, already extracted.

    ``columns`` maps a column name to its values (a list or a 1-D array, one per row), or a
    tuple of names to a 2-D array with one column per name: how a model's input matrix
    arrives without being cut up request by request (the worker cuts the group's
    concatenated matrix once).
    """

    deployment: str
    variant: str
    model: str
    version: int
    time_ns: int  # when the request arrived, ns since the epoch (UTC)
    rows: int
    columns: Mapping[str | tuple[str, ...], Any]


@dataclass(frozen=True, slots=True)
class Retention:
    """How long rows of each granularity are kept (None: for ever)."""

    minute_hours: float | None = 48.0
    hour_days: float | None = 30.0
    day_days: float | None = None

    def cutoffs(self, now_s: float) -> dict[Granularity, int]:
        """Per granularity, the bucket start before which rows are deleted."""
        spans: dict[Granularity, float | None] = {
            "minute": None if self.minute_hours is None else self.minute_hours * 3600,
            "hour": None if self.hour_days is None else self.hour_days * 86400,
            "day": None if self.day_days is None else self.day_days * 86400,
        }
        return {g: int(now_s - span) for g, span in spans.items() if span is not None}


class LiveProfiles(Generic[T]):
    """A bounded queue, a worker thread and the ``profile_buckets`` rows of one replica.

    >>> live = LiveProfiles(db, extract=lambda obs: obs)   # doctest: +SKIP
    >>> live.start()                                       # doctest: +SKIP
    >>> live.submit(observation)  # from the event loop: O(1), never blocks  # doctest: +SKIP
    >>> live.close()              # writes every open bucket                 # doctest: +SKIP
    """

    def __init__(
        self,
        database: Database,
        *,
        extract: Callable[[T], Observation | None],
        replica: str | None = None,
        flush_seconds: float = 1.0,
        max_queue: int = 100_000,
        retention: Retention | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """``extract`` turns a queued item into an :class:`Observation` (None: not profiled)
        on the worker thread; ``replica`` names this writer's rows (default: host, process
        id and a random suffix); ``clock`` gives the time in ns (tests move it)."""
        self.database = database
        self.replica = replica or _replica_name()
        self._extract = extract
        self._flush_seconds = flush_seconds
        self._max_queue = max_queue
        self._retention = retention if retention is not None else Retention()
        self._clock = clock
        self._queue: deque[T] = deque()
        self._open: dict[tuple[tuple[str, str, str, int], int], Profile] = {}
        self._wake = threading.Event()
        self._work = threading.Lock()  # one drain-and-write at a time (worker, flush())
        self._stop = False
        self._thread: threading.Thread | None = None
        self._metrics = _Metrics(registry)
        gauge_function(self._metrics.queued, lambda: len(self._queue))
        self._retry_at = 0.0
        self._failures = 0
        self._last_log = 0.0
        self._next_retention = 0.0

    # --- the request path ----------------------------------------------------------------

    def submit(self, item: T) -> None:
        """Queue one request's item; never blocks. When the queue is full the item is
        dropped and counted (``reason="queue_full"``)."""
        if len(self._queue) >= self._max_queue:
            self._metrics.dropped.labels("queue_full").inc()
            return
        self._queue.append(item)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="stalwart-live-profiles", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Profile what is queued, write every open bucket, stop the worker."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush(final=True)

    def flush(self, *, final: bool = True) -> bool:
        """Profile what is queued and write the buckets that are over (every open bucket
        when ``final``), now, on the caller's thread. True when nothing is left unwritten
        that should have been (False: the database refused; the buckets are kept)."""
        with self._work:
            self._drain()
            return self._write(final=final)

    # --- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        drained_minute = -1
        while not self._stop:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            if self._stop:
                break
            try:
                # A drain costs a few hundred µs whatever its size (a sketch update per
                # column), so at low rates requests wait until a thousand are queued or
                # their minute is over: the cost per request stays that of a full drain,
                # and the queue holds at most about a thousand plus one interval's worth.
                minute = (self._clock() - _GRACE_NS) // 60_000_000_000
                if len(self._queue) >= _DRAIN_AT or minute != drained_minute:
                    drained_minute = minute
                    with self._work:
                        self._drain()
                if self._open and time.monotonic() >= self._retry_at:
                    with self._work:
                        self._write(final=False)
                self._maintain()
            except Exception:  # noqa: BLE001 - the worker must outlive a bug in one item; it is logged
                _log.exception("live profiles: a drain failed; going on with the next one")

    def _drain(self) -> None:
        """Turn what is queued into observations, grouped, and update the open profiles."""
        n = len(self._queue)
        if not n:
            return
        groups: dict[tuple[tuple[str, str, str, int], int], _Group] = {}
        popleft = self._queue.popleft
        extract = self._extract
        unprofilable = 0
        for _ in range(n):
            item = popleft()
            try:
                obs = extract(item)
            except (StalwartError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
                unprofilable += 1
                self._note("live profiles: a request could not be profiled", exc)
                continue
            if obs is None:
                continue
            key = ((obs.deployment, obs.variant, obs.model, obs.version), obs.time_ns // 60_000_000_000 * 60)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            group.add(obs)
        if unprofilable:
            self._metrics.dropped.labels("unprofilable").inc(unprofilable)
        for key, group in groups.items():
            profile = self._open.get(key)
            if profile is None:
                profile = self._open[key] = Profile()
            group.update(profile)
            self._metrics.requests.inc(group.requests)
        self._bound_open()

    def _write(self, *, final: bool) -> bool:
        """Write the buckets that are over (all when ``final``) with their hour and day
        rollups, in one transaction; on failure keep them and back off."""
        if not self._open:
            return True
        now_ns = self._clock()
        closed = [
            key for key in self._open
            if final or (key[1] + 60) * 1_000_000_000 + _GRACE_NS <= now_ns
        ]
        if not closed:
            return True
        rows = _rows_for([(key, self._open[key]) for key in closed])
        try:
            self.database.transact(lambda conn: _upsert(conn, rows, self.replica, time.time()))
        except (StalwartError, SQLAlchemyError) as exc:
            self._failures += 1
            self._metrics.write_failures.inc()
            self._retry_at = time.monotonic() + _BACKOFF[min(self._failures, len(_BACKOFF)) - 1]
            self._note("live profiles: writing buckets failed; kept in memory and retried", exc)
            return False
        self._failures = 0
        for key in closed:
            del self._open[key]
        self._metrics.buckets.inc(len(closed))
        return True

    def _bound_open(self) -> None:
        """While the database is down buckets pile up: keep the newest :data:`_MAX_OPEN`."""
        excess = len(self._open) - _MAX_OPEN
        if excess <= 0:
            return
        for key in sorted(self._open, key=lambda k: k[1])[:excess]:
            self._metrics.dropped.labels("unwritten").inc(self._open.pop(key).rows)

    def _maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_retention:
            return
        self._next_retention = now + _RETENTION_EVERY
        try:
            delete_expired(self.database, self._retention, self._clock() / 1e9)
        except (StalwartError, SQLAlchemyError) as exc:
            self._note("live profiles: deleting expired buckets failed; retried in an hour", exc)

    def _note(self, message: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            _log.warning(message, error=f"{type(exc).__name__}: {exc}")


def oip_deployment(model: str) -> str:
    """The name ``/v2`` requests to ``model`` are profiled under (they have no deployment)."""
    return f"/v2/{model}"


# --- reading ---------------------------------------------------------------------------


def read_profiles(
    database: Database,
    deployment: str,
    *,
    since: datetime | float,
    until: datetime | float | None = None,
    variant: str | None = None,
    model: str | None = None,
    version: int | None = None,
    granularity: Granularity | None = None,
) -> list[tuple[datetime, Profile]]:
    """The deployment's profile per bucket whose start is in ``[since, until)`` (``until``:
    now), each merged across replicas (and variants, models and versions unless one is
    named), oldest first. Times are aware datetimes or seconds since the epoch; bucket
    starts come back as UTC datetimes. ``granularity`` None picks one by the span: minutes
    up to 6 hours, hours up to 14 days, days beyond."""
    lo, hi = epoch_span(since, until)
    if granularity is None:
        span = hi - lo
        granularity = "minute" if span <= 6 * 3600 else "hour" if span <= 14 * 86400 else "day"
    step = _step(granularity)
    first, end = -(-lo // step) * step, -(-hi // step) * step
    if (end - first) // step > _MAX_BUCKETS_READ:
        raise ConfigError(
            f"{(end - first) // step} {granularity} buckets asked for (at most {_MAX_BUCKETS_READ}); "
            f"choose a coarser granularity or a shorter span"
        )
    found = _select(database, deployment, [(granularity, first, end)], variant, model, version)
    merged: dict[int, Profile] = {}
    for start, profile in found:
        into = merged.get(start)
        if into is None:
            merged[start] = profile
        else:
            _merge_into(into, profile)
    return [(datetime.fromtimestamp(start, UTC), merged[start]) for start in sorted(merged)]


def merged_profile(
    database: Database,
    deployment: str,
    *,
    since: datetime | float,
    until: datetime | float | None = None,
    variant: str | None = None,
    model: str | None = None,
    version: int | None = None,
    granularity: Granularity | None = None,
) -> Profile:
    """One profile of everything the deployment answered in ``[since, until)``: the
    buckets :func:`read_profiles` would return, merged. ``granularity`` None covers the
    span with the fewest rows: whole UTC days as day rows, whole hours as hour rows, the
    minutes at either edge as minute rows (edges older than the minute retention have no
    rows left: align such spans to hours)."""
    if granularity is not None:
        total = Profile()
        for _start, profile in read_profiles(
            database, deployment, since=since, until=until, variant=variant,
            model=model, version=version, granularity=granularity,
        ):
            _merge_into(total, profile)
        return total
    lo, hi = epoch_span(since, until)
    lo, hi = -(-lo // 60) * 60, -(-hi // 60) * 60
    total = Profile()
    for _bucket, profile in _select(database, deployment, _cover(lo, hi), variant, model, version):
        _merge_into(total, profile)
    return total


def delete_expired(database: Database, retention: Retention, now_s: float | None = None) -> int:
    """Delete the rows retention no longer keeps; returns how many went."""
    cutoffs = retention.cutoffs(time.time() if now_s is None else now_s)
    if not cutoffs:
        return 0
    table = t.profile_buckets

    def work(conn: Connection) -> int:
        deleted = 0
        for granularity, cutoff in cutoffs.items():
            result = conn.execute(
                table.delete().where(table.c.granularity == granularity, table.c.bucket_start < cutoff)
            )
            deleted += result.rowcount or 0
        return deleted

    return database.transact(work)


# --- internals ---------------------------------------------------------------------------


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.dropped = Counter(
            "stalwart_live_profiles_dropped",
            "Requests (or rows, for unwritten buckets) left out of live profiles, by reason (queue_full, unprofilable, unwritten)",
            ("reason",), registry=registry,
        )
        self.requests = Counter("stalwart_live_profiles_requests", "Requests added to live profiles", registry=registry)
        self.buckets = Counter("stalwart_live_profiles_buckets_written", "Minute buckets written (with their hour and day rollups)", registry=registry)
        self.write_failures = Counter("stalwart_live_profiles_write_failures", "Failed writes of profile buckets (retried)", registry=registry)
        self.queued = Gauge("stalwart_live_profiles_queued", "Requests waiting to be profiled", registry=registry, multiprocess_mode="livesum")


@dataclass(slots=True)
class _Group:
    """The observations of one deployment, variant, version and minute, column by column."""

    requests: int = 0
    rows: int = 0
    columns: dict[str | tuple[str, ...], list[Any]] = field(default_factory=dict)

    def add(self, obs: Observation) -> None:
        self.requests += 1
        self.rows += obs.rows
        columns = self.columns
        for name, values in obs.columns.items():
            parts = columns.get(name)
            if parts is None:
                columns[name] = [values]
            else:
                parts.append(values)

    def update(self, profile: Profile) -> None:
        """Each column concatenated once, then one sketch update per column."""
        features = profile.features
        for name, parts in self.columns.items():
            if isinstance(name, tuple):
                matrix = _matrix(parts, len(name))
                if matrix is None:
                    continue
                by_column = np.ascontiguousarray(matrix.T)  # each column contiguous: no copy per sketch
                for j, column in enumerate(name):
                    _feature(features, column).update(by_column[j])
            else:
                _feature(features, name).update(_column(parts))
        profile.rows += self.rows


def _feature(features: dict[str, FeatureProfile], name: str) -> FeatureProfile:
    feature = features.get(name)
    if feature is None:
        feature = features[name] = FeatureProfile()
    return feature


def _column(parts: list[Any]) -> np.ndarray[Any, Any]:
    """One column from its per-request pieces (arrays or lists)."""
    if all(isinstance(p, np.ndarray) for p in parts):
        arrays = [p.reshape(-1) for p in parts]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return column_array(list(chain.from_iterable(p.reshape(-1).tolist() if isinstance(p, np.ndarray) else p for p in parts)))


def _matrix(parts: list[Any], width: int) -> np.ndarray[Any, Any] | None:
    """One matrix from per-request 2-D pieces of ``width`` columns (others left out)."""
    arrays = [p for p in (np.asarray(p) for p in parts) if p.ndim == 2 and p.shape[1] == width]
    if not arrays:
        return None
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)


_ROLLUPS: tuple[Granularity, ...] = ("hour", "day")
_Row = tuple[tuple[str, str, str, int], Granularity, int, int, dict[str, Any]]


def _rows_for(buckets: list[tuple[tuple[tuple[str, str, str, int], int], Profile]]) -> list[_Row]:
    """The minute rows of closed buckets and their deltas to the hour and day rows (merged
    here first, so one write touches each row once)."""
    out: list[_Row] = []
    rollups: dict[tuple[tuple[str, str, str, int], Granularity, int], Profile] = {}
    for (ident, minute), profile in buckets:
        data = profile.to_dict()
        out.append((ident, "minute", minute, profile.rows, data))
        for granularity in _ROLLUPS:
            step = GRANULARITIES[granularity]
            key = (ident, granularity, minute - minute % step)
            into = rollups.get(key)
            if into is None:
                rollups[key] = Profile.from_dict(data)  # a copy: the minute row keeps its own
            else:
                _merge_into(into, profile)
    for (ident, granularity, start), profile in rollups.items():
        out.append((ident, granularity, start, profile.rows, profile.to_dict()))
    return out


def _upsert(conn: Connection, rows: list[_Row], replica: str, now: float) -> None:
    """Insert each row, or merge it into the replica's stored row (a bucket written again).

    Only this replica writes rows under its name, so reading then writing is safe without
    a row lock; the stored dicts are read fresh, so a retried transaction repeats exactly.
    """
    table = t.profile_buckets
    for (deployment, variant, model, version), granularity, start, n, data in rows:
        where = (
            table.c.deployment == deployment,
            table.c.variant == variant,
            table.c.model == model,
            table.c.version == version,
            table.c.granularity == granularity,
            table.c.bucket_start == start,
            table.c.replica == replica,
        )
        stored = conn.execute(select(table.c.rows, table.c.profile).where(*where)).first()
        if stored is None:
            conn.execute(table.insert().values(
                deployment=deployment, variant=variant, model=model, version=version,
                granularity=granularity, bucket_start=start, replica=replica,
                rows=n, profile=data, updated_at=now,
            ))
            continue
        merged = Profile.from_dict(stored.profile)
        _merge_into(merged, Profile.from_dict(data))
        conn.execute(table.update().where(*where).values(rows=int(stored.rows) + n, profile=merged.to_dict(), updated_at=now))


def _select(
    database: Database,
    deployment: str,
    ranges: Iterable[tuple[Granularity, int, int]],
    variant: str | None,
    model: str | None,
    version: int | None,
) -> list[tuple[int, Profile]]:
    table = t.profile_buckets
    spans = [
        and_(table.c.granularity == g, table.c.bucket_start >= lo, table.c.bucket_start < hi)
        for g, lo, hi in ranges if lo < hi
    ]
    if not spans:
        return []
    query = select(table.c.bucket_start, table.c.profile).where(table.c.deployment == deployment, or_(*spans))
    if variant is not None:
        query = query.where(table.c.variant == variant)
    if model is not None:
        query = query.where(table.c.model == model)
    if version is not None:
        query = query.where(table.c.version == version)
    query = query.order_by(table.c.bucket_start, table.c.replica, table.c.model, table.c.version, table.c.variant)
    with database.read() as conn:
        found = conn.execute(query).all()
    return [(int(row.bucket_start), Profile.from_dict(row.profile)) for row in found]


def _cover(lo: int, hi: int) -> list[tuple[Granularity, int, int]]:
    """``[lo, hi)`` (whole minutes) as the fewest aligned day, hour and minute ranges."""
    out: list[tuple[Granularity, int, int]] = []

    def split(a: int, b: int, level: int) -> None:
        granularities: tuple[Granularity, ...] = ("day", "hour", "minute")
        granularity = granularities[level]
        step = GRANULARITIES[granularity]
        first, last = -(-a // step) * step, b // step * step
        if granularity == "minute" or first >= last:
            if granularity == "minute":
                out.append(("minute", a, b))
            else:
                split(a, b, level + 1)
            return
        out.append((granularity, first, last))
        split(a, first, level + 1)
        split(last, b, level + 1)

    if lo < hi:
        split(lo, hi, 0)
    return out


def _merge_into(into: Profile, other: Profile) -> None:
    """Add ``other``'s rows to ``into``, in place (``other`` is not changed)."""
    for name, feature in other.features.items():
        mine = into.features.get(name)
        if mine is None:
            mine = into.features[name] = FeatureProfile()
        mine.merge_into(feature)
    into.rows += other.rows




def _step(granularity: str) -> int:
    try:
        return GRANULARITIES[granularity]  # type: ignore[index]
    except KeyError:
        raise ConfigError(f"granularity {granularity!r} is not one of minute, hour, day") from None


def _replica_name() -> str:
    """This writer's rows: host, process and a random suffix (a restarted process writes
    rows of its own; readers merge them all)."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
