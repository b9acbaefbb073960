"""Writing rows to a SQL source, and dropping the cached features they change.

A write changes the features of the entities it touches, in every FeatureSet computed
from the source. :func:`write_rows` checks the rows (every one, before anything is
written), inserts them in one transaction, then invalidates those entities in each such
FeatureSet: in the process's cache and, through Redis, in every replica's
(:meth:`stalwart.cache.FeatureCache.invalidate`). Invalidating *after* the commit is what
makes it safe: a load that read the old rows either finishes before the invalidation
(and its value is dropped) or is marked dirty by it (and is not cached).

:func:`write` (scripts and jobs) and :func:`awrite` (async code) are the Python API over
it: ``write(transactions, rows)``. They only know the FeatureSets defined in their own
process (each one registers with its source when constructed): a writer script must import
the project's definitions, not just name the table. Sources are declarations
(:mod:`stalwart.project`) and do no I/O themselves; writing to one is this module's job.

Tables that other systems write to, on PostgreSQL, announce their writes through NOTIFY
instead: :mod:`stalwart.features.notify`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING, Any

from stalwart.config import Settings, load_settings
from stalwart.errors import ConfigError, RequestError
from stalwart.features.readers import SqlReader
from stalwart.monitoring.logs import get_logger
from stalwart.project import FeatureSet, SqlSource
from stalwart.storage import DatabasePool

if TYPE_CHECKING:
    from stalwart.cache.cache import FeatureCache
    from stalwart.cache.keys import EntityKey

__all__ = [
    "WriteResult",
    "awrite",
    "check_rows",
    "invalidate",
    "write",
    "write_rows",
]

_log = get_logger("stalwart.features")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: rows inserted, distinct entities touched, the FeatureSets whose
    cached values for them were dropped, and whether every replica was told (False: Redis
    could not take the invalidation, or there is no Redis and no cache in this process to
    tell; replicas then serve the old values until their TTL)."""

    rows: int
    entities: int
    feature_sets: tuple[str, ...]
    invalidated: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "entities": self.entities,
            "feature_sets": list(self.feature_sets),
            "invalidated": self.invalidated,
        }


def check_rows(
    source: SqlSource, rows: Sequence[Mapping[str, Any]], reader: SqlReader
) -> tuple[list[dict[str, Any]], list[EntityKey]]:
    """Rows ready to insert (timestamps as the table stores them) and the distinct entity
    keys they touch. Raises RequestError naming the first bad row and field."""
    if isinstance(rows, Mapping | str | bytes) or not isinstance(rows, Sequence):
        raise RequestError("rows: send a list of objects, one per row", field="rows")
    known = set(reader.column_names)
    keys = source.entity.keys
    ts = source.timestamp
    prepared: list[dict[str, Any]] = []
    touched: dict[EntityKey, None] = {}
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        if not isinstance(row, Mapping):
            raise RequestError(f"{where}: must be an object of column values", field=where)
        for column in (*keys, ts):
            if row.get(column) is None:
                raise RequestError(f"{where}: missing '{column}' (entity keys and '{ts}' are required)", field=f"{where}.{column}")
        unknown = [c for c in row if c not in known]
        if unknown:
            raise RequestError(
                f"{where}.{unknown[0]}: table '{source.table}' has no column '{unknown[0]}'; its "
                f"columns are {', '.join(sorted(known))}",
                field=f"{where}.{unknown[0]}",
            )
        key = tuple(_key_part(row[k], f"{where}.{k}") for k in keys)
        try:
            stamp = reader.stored_time(row[ts])
        except ConfigError as exc:
            raise RequestError(f"{where}.{ts}: {exc.message}", field=f"{where}.{ts}") from None
        prepared.append({**row, **dict(zip(keys, key, strict=True)), ts: stamp})
        touched[key] = None
    return prepared, list(touched)


def _key_part(value: Any, where: str) -> int | str:
    if isinstance(value, str):
        return value
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    raise RequestError(f"{where}: an entity key must be an integer or a string, got {type(value).__name__}", field=where)


async def write_rows(
    source: SqlSource,
    rows: Sequence[Mapping[str, Any]],
    *,
    reader: SqlReader,
    cache: FeatureCache | None,
    feature_sets: Iterable[FeatureSet],
) -> WriteResult:
    """Check and insert ``rows`` into ``source`` through ``reader``, then invalidate the
    entities they touch in every set of ``feature_sets`` computed from ``source`` (sets
    over other sources are skipped), in ``cache`` (None: no cache to tell)."""
    prepared, keys = check_rows(source, rows, reader)
    targets = sorted({fs.name for fs in feature_sets if fs.source.name == source.name})
    if not prepared:
        return WriteResult(0, 0, tuple(targets), True)
    written = await asyncio.to_thread(reader.write, prepared)
    told = True
    for name in targets:
        told = await invalidate(name, keys, cache) and told
    if cache is None and targets:
        told = False
    if not told:
        _log.warning(
            "feature_invalidation_incomplete",
            source=source.name,
            feature_sets=targets,
            entities=len(keys),
            reason="no cache to tell" if cache is None else "Redis unavailable; published when it returns",
        )
    return WriteResult(written, len(keys), tuple(targets), told)


async def invalidate(
    feature_set: FeatureSet | str,
    keys: Sequence[EntityKey | Mapping[str, Any]] | None,
    cache: FeatureCache | None,
) -> bool:
    """Drop cached values of ``keys`` (entity key tuples, or entity objects like
    ``{"card_id": 17}`` when given a FeatureSet) or, with None, of the whole set, in every
    version, here and in every replica. Returns False when Redis could not take it now (it
    is published when Redis returns)."""
    if cache is None:
        return True
    if isinstance(feature_set, str):
        name, entity_keys = feature_set, None
    else:
        name, entity_keys = feature_set.name, tuple(feature_set.entity.keys)
    if keys is None:
        return await cache.invalidate(name)
    return await cache.invalidate(name, [_entity_key(key, entity_keys, f"entities[{i}]") for i, key in enumerate(keys)])


def _entity_key(key: EntityKey | Mapping[str, Any], names: tuple[str, ...] | None, where: str) -> EntityKey:
    if isinstance(key, Mapping):
        if names is None:
            raise RequestError(f"{where}: give entity key tuples when naming the feature set only", field=where)
        missing = [k for k in names if k not in key]
        if missing:
            raise RequestError(f"{where}: missing key '{missing[0]}'", field=f"{where}.{missing[0]}")
        return tuple(_key_part(key[k], f"{where}.{k}") for k in names)
    parts = (key,) if isinstance(key, str | Integral) else tuple(key)
    if names is not None and len(parts) != len(names):
        raise RequestError(f"{where}: an entity key has {len(names)} part(s) ({', '.join(names)})", field=where)
    return tuple(_key_part(p, where) for p in parts)


async def awrite(
    source: SqlSource,
    rows: Sequence[Mapping[str, Any]],
    *,
    settings: Settings | None = None,
    cache: FeatureCache | None = None,
) -> WriteResult:
    """Insert ``rows`` (dicts of column values) into ``source`` and invalidate the cached
    features of the entities they belong to, in every FeatureSet declared over it: the
    :func:`write` of async code.

    For a process that has only its definitions: the database is ``source.url`` or the
    settings', the FeatureSets are those registered with ``source`` in this process, and
    ``cache`` is the process's own FeatureCache if it has one (a server); otherwise one is
    built from the settings (Redis when configured) for the time of the invalidation."""
    settings = settings or load_settings()
    pool = DatabasePool(settings)
    own: FeatureCache | None = None
    try:
        reader = await asyncio.to_thread(SqlReader, source, pool(source.url))
        if cache is None and settings.redis_url is not None:
            from stalwart.cache.cache import FeatureCache

            cache = own = FeatureCache.from_settings(settings)
        return await write_rows(source, rows, reader=reader, cache=cache, feature_sets=source.feature_sets())
    finally:
        if own is not None:
            await own.aclose()
        pool.dispose()


def write(source: SqlSource, rows: Sequence[Mapping[str, Any]], *, settings: Settings | None = None) -> WriteResult:
    """Insert ``rows`` (dicts of column values) into ``source`` and invalidate the cached
    features of the entities they belong to, in every FeatureSet declared over it.

    >>> write(transactions, [{"card_id": 17, "ts": now, "amount": 12.5}])  # doctest: +SKIP

    For scripts and jobs (it runs its own event loop; in async code ``await``
    :func:`awrite`). Invalidation reaches every serving replica through Redis when
    ``STALWART_REDIS_URL`` is set. Only FeatureSets defined in this process are known:
    import the project's definitions before writing. Raises ``RequestError`` naming the
    row and column of a malformed row, before anything is written.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(awrite(source, rows, settings=settings))
    raise ConfigError(
        f"write() runs its own event loop and cannot be called from async code; use "
        f"'await awrite({source.name}, rows)' there"
    )
