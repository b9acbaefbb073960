"""Invalidation for PostgreSQL tables written by other systems, through LISTEN/NOTIFY:
the triggers, the listener, and the glue from a project's sources to both.

Why here, in ``features``: the listener is generic (a channel, source names mapped to
FeatureSet names, a cache to invalidate), but what to install and listen for comes from
the declarations (a :class:`~stalwart.project.SqlSource`'s table, database and entity keys)
and from which FeatureSets are cached (:func:`~stalwart.features.caching.cache_policy`).
``features`` already sits above ``cache`` and knows both; putting this in ``cache`` would
make the cache reach up to feature definitions and caching policy. One module keeps the
trigger's payload format and the listener that decodes it side by side.

:func:`install_source_trigger` and :func:`pg_listeners` are the project-level API (a source,
the server's cached FeatureSets); :func:`install_notify_trigger` and
:class:`PgInvalidationListener` work on a bare table and source names.

:func:`install_notify_trigger` adds statement-level triggers to a table: after each
INSERT, UPDATE, DELETE or TRUNCATE, they send the changed rows' entity keys on a channel
(``{"s": source, "k": [[17], [18]]}``), at commit, and only if the transaction commits.
Keys go in chunks that fit NOTIFY's 8000-byte payload; a statement that touches more than
``max_keys`` rows (or a TRUNCATE) sends ``{"s": source, "all": true}`` instead. The
triggers never fail the writer's transaction because of size.

:class:`PgInvalidationListener` listens on that channel and invalidates the FeatureSets
built on each source. Every replica runs its own listener, so it does not re-announce on
Redis (each replica drops its own in-process tier; Redis is invalidated in place, which is
idempotent). After a lost connection it invalidates those FeatureSets whole, since
notifications sent meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy.engine import make_url

from stalwart._optional import require
from stalwart.cache.background import Background
from stalwart.cache.keys import EntityKey, encode_entity
from stalwart.config import Settings, load_settings
from stalwart.errors import ConfigError, StorageError
from stalwart.features.caching import cache_policy
from stalwart.monitoring.logs import get_logger
from stalwart.project import FeatureSet, SqlSource

if TYPE_CHECKING:
    from stalwart.cache.cache import FeatureCache

__all__ = [
    "DEFAULT_CHANNEL",
    "PgInvalidationListener",
    "install_notify_trigger",
    "install_source_trigger",
    "pg_listeners",
    "uninstall_notify_trigger",
]

DEFAULT_CHANNEL = "stalwart_cache"
_PAYLOAD_LIMIT = 7900  # NOTIFY refuses payloads of 8000 bytes or more
_OPS = {"insert": "INSERT", "update": "UPDATE", "delete": "DELETE", "truncate": "TRUNCATE"}
_log = get_logger("stalwart.cache")  # its events are the cache's, as before the move


class _Payload(msgspec.Struct):
    s: str
    k: list[list[Any]] | None = None
    all: bool = False


def _dsn(url: str) -> str:
    # Accept the SQLAlchemy spelling used by STALWART_DB_URL.
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _names(schema: str, table: str) -> tuple[str, str]:
    digest = hashlib.sha1(f"{schema}.{table}".encode()).hexdigest()[:12]  # noqa: S324 - a name, not security
    return f"stalwart_notify_{digest}", f"stalwart_cache_{digest}"


def _function_sql(
    psql: Any, fn: str, op: str, key_columns: Sequence[str], source: str, channel: str, max_keys: int, chunk: int
) -> Any:
    """The body of one trigger function; ``op`` picks the transition tables it reads."""
    sql = psql
    lit = sql.Literal
    everything = sql.SQL("PERFORM pg_notify({channel}, json_build_object('s', {source}, 'all', true)::text); RETURN NULL;").format(
        channel=lit(channel), source=lit(source)
    )
    if op == "truncate":
        body = everything
    else:
        tables = {"insert": ["stalwart_new"], "update": ["stalwart_new", "stalwart_old"], "delete": ["stalwart_old"]}[op]
        keys = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT jsonb_build_array({cols}) AS k FROM {t} r").format(
                cols=sql.SQL(", ").join(sql.SQL("r.") + sql.Identifier(c) for c in key_columns),
                t=sql.Identifier(t),
            )
            for t in tables
        )
        count = sql.SQL(" + ").join(sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(t)) for t in tables)
        body = sql.SQL(
            """
            IF {count} > {max_keys} THEN {everything} END IF;
            FOR batch IN
              SELECT jsonb_agg(k) FROM (
                SELECT k, (row_number() OVER () - 1) / {chunk} AS g
                FROM (SELECT DISTINCT k FROM ({keys}) changed) distinct_keys
              ) numbered GROUP BY g
            LOOP
              payload := json_build_object('s', {source}, 'k', batch)::text;
              IF octet_length(payload) > {limit} THEN {everything} END IF;
              PERFORM pg_notify({channel}, payload);
            END LOOP;
            RETURN NULL;
            """
        ).format(
            count=count,
            max_keys=lit(max_keys),
            everything=everything,
            chunk=lit(chunk),
            keys=keys,
            source=lit(source),
            limit=lit(_PAYLOAD_LIMIT),
            channel=lit(channel),
        )
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $stalwart$ "
        "DECLARE batch jsonb; payload text; BEGIN {body} END; $stalwart$"
    ).format(fn=sql.Identifier(fn), body=body)


def install_notify_trigger(
    dsn: str,
    table: str,
    key_columns: Sequence[str],
    *,
    source: str | None = None,
    schema: str = "public",
    channel: str = DEFAULT_CHANNEL,
    max_keys: int = 10_000,
) -> None:
    """Make every committed write to ``schema.table`` announce its entity keys.

    ``key_columns`` are the columns that make up the entity key, in the key's order;
    ``source`` is the name the listener maps to FeatureSets (the table's name by default).
    Installing again replaces the triggers (idempotent).
    """
    if not key_columns:
        raise ConfigError(f"install_notify_trigger({table!r}) needs the entity key columns")
    psycopg = require("psycopg", extra="postgres", purpose="PostgreSQL NOTIFY invalidation")
    from psycopg import sql

    fn, trigger = _names(schema, table)
    target = sql.Identifier(schema, table)
    statements = []
    for op, verb in _OPS.items():
        statements.append(_function_sql(sql, f"{fn}_{op}", op, key_columns, source or table, channel, max_keys, 100))
        statements.append(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(f"{trigger}_{op}"), target))
        if op == "truncate":
            create = "CREATE TRIGGER {trg} AFTER TRUNCATE ON {target} FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"
        else:
            transition = {
                "insert": "REFERENCING NEW TABLE AS stalwart_new",
                "update": "REFERENCING OLD TABLE AS stalwart_old NEW TABLE AS stalwart_new",
                "delete": "REFERENCING OLD TABLE AS stalwart_old",
            }[op]
            create = f"CREATE TRIGGER {{trg}} AFTER {verb} ON {{target}} {transition} FOR EACH STATEMENT EXECUTE FUNCTION {{fn}}()"
        statements.append(
            sql.SQL(create).format(trg=sql.Identifier(f"{trigger}_{op}"), target=target, fn=sql.Identifier(f"{fn}_{op}"))
        )
    try:
        with psycopg.connect(_dsn(dsn)) as conn, conn.transaction():
            for statement in statements:
                conn.execute(statement)
    except psycopg.Error as exc:
        raise StorageError(
            f"cannot install the cache NOTIFY triggers on {schema}.{table}: {exc}; check that the "
            f"table and key columns exist and that the user may create functions and triggers"
        ) from exc


def uninstall_notify_trigger(dsn: str, table: str, *, schema: str = "public") -> None:
    """Remove what :func:`install_notify_trigger` added to ``schema.table``."""
    psycopg = require("psycopg", extra="postgres", purpose="PostgreSQL NOTIFY invalidation")
    from psycopg import sql

    fn, trigger = _names(schema, table)
    try:
        with psycopg.connect(_dsn(dsn)) as conn, conn.transaction():
            for op in _OPS:
                conn.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                        sql.Identifier(f"{trigger}_{op}"), sql.Identifier(schema, table)
                    )
                )
                conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(f"{fn}_{op}")))
    except psycopg.Error as exc:
        raise StorageError(f"cannot remove the cache NOTIFY triggers from {schema}.{table}: {exc}") from exc


class PgInvalidationListener(Background):
    """Turns NOTIFY messages from :func:`install_notify_trigger` into cache invalidations.

    ``targets`` maps a source name to the FeatureSets computed from it. Start it in the
    application's lifespan next to :meth:`FeatureCache.start`; it reconnects by itself.
    """

    _task_name = "stalwart-cache-pg"

    def __init__(
        self,
        dsn: str,
        cache: FeatureCache,
        targets: Mapping[str, Sequence[str]],
        *,
        channel: str = DEFAULT_CHANNEL,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self._psycopg = require("psycopg", extra="postgres", purpose="PostgreSQL NOTIFY invalidation")
        self.dsn = _dsn(dsn)
        self.cache = cache
        self.targets = {source: tuple(sets) for source, sets in targets.items()}
        self.channel = channel
        self.backoff = backoff
        self.connected = False
        self.received = 0
        self._decoder = msgspec.json.Decoder(_Payload)
        self._connections = 0
        super().__init__()

    def _stopped(self) -> None:
        self.connected = False
        self._up.clear()

    async def _run(self) -> None:
        psycopg = self._psycopg
        from psycopg import sql

        delay = self.backoff[0]
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    await self._listening()
                    delay = self.backoff[0]
                    async for notify in conn.notifies():
                        await self.apply(notify.payload)
            except (psycopg.Error, OSError) as exc:
                if self.connected:
                    _log.warning("cache_pg_listener_disconnected", channel=self.channel, error=repr(exc))
                self.connected = False
                self._up.clear()
            except Exception:  # noqa: BLE001 - a listener that died silently would stop invalidating; log and listen again
                _log.exception("cache_pg_listener_failed", channel=self.channel)
                self.connected = False
                self._up.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _listening(self) -> None:
        self._connections += 1
        # Notifications sent while we were not listening are lost: after a reconnect,
        # invalidate the FeatureSets whole (the first time, only what this replica holds).
        for sets in self.targets.values():
            for name in sets:
                if self._connections == 1:
                    self.cache.invalidator.drop_local(name, None)
                else:
                    await self.cache.invalidator.invalidate(name, None, announce=False)
        self.connected = True
        self._up.set()

    async def apply(self, payload: str) -> None:
        """Invalidate what one notification names."""
        self.received += 1
        try:
            message = self._decoder.decode(payload)
        except msgspec.DecodeError:
            _log.warning("cache_pg_notify_undecodable", channel=self.channel, size=len(payload))
            return
        sets = self.targets.get(message.s, ())
        if not sets:
            return
        entities: list[str] | None = None
        if not message.all and message.k is not None:
            entities = [encode_entity(_key(k)) for k in message.k]
        for name in sets:
            await self.cache.invalidator.invalidate(name, entities, announce=False)


def _key(values: list[Any]) -> EntityKey:
    return tuple(values)


def _postgres_dsn(source: SqlSource, settings: Settings | None) -> str | None:
    url = make_url(source.url or (settings or load_settings()).resolved_db_url())
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def install_source_trigger(
    source: SqlSource, settings: Settings | None = None, *, channel: str = DEFAULT_CHANNEL, max_keys: int = 10_000
) -> None:
    """Make every committed write to ``source``'s table (by anyone, in plain SQL) announce
    its entity keys, for :func:`pg_listeners` to invalidate. PostgreSQL only; idempotent."""
    dsn = _postgres_dsn(source, settings)
    if dsn is None:
        raise ConfigError(
            f"source '{source.name}' is not on PostgreSQL, so it cannot notify writes; write "
            f"through stalwart.features.write() (or POST its rows to the server) so the cache hears of them"
        )
    install_notify_trigger(dsn, source.table, list(source.entity.keys), source=source.name, channel=channel, max_keys=max_keys)


def pg_listeners(
    feature_sets: Iterable[FeatureSet],
    cache: FeatureCache,
    settings: Settings | None = None,
    *,
    channel: str = DEFAULT_CHANNEL,
) -> list[PgInvalidationListener]:
    """One NOTIFY listener per PostgreSQL database holding a SQL source of these cached
    FeatureSets, each mapping its sources to their sets. Start them in the server's
    lifespan (``await listener.start()``) and stop them on shutdown (``await
    listener.stop()``); without PostgreSQL sources the list is empty."""
    targets: dict[str, dict[str, list[str]]] = {}
    for feature_set in feature_sets:
        source = feature_set.source
        if not isinstance(source, SqlSource) or cache_policy(feature_set) is None:
            continue
        dsn = _postgres_dsn(source, settings)
        if dsn is not None:
            targets.setdefault(dsn, {}).setdefault(source.name, []).append(feature_set.name)
    if not targets:
        return []
    return [PgInvalidationListener(dsn, cache, sources, channel=channel) for dsn, sources in targets.items()]
