"""The faults, one class each: ``inject`` starts it against the world's real servers,
``clear`` ends it (and ``note`` says what the fault's own traffic saw, where it has any).

Every fault acts from outside the server under test, as the failure it names would: the
model through its fault switch file (``models.py``), the feature source through SQL on its
PostgreSQL, Redis and PostgreSQL by killing their processes, clients through sockets, the
disk by filling the spool's tmpfs. Background load (wrk, socket holders, senders) is
bounded by the fault's clearing and by its own time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from benchmarks.chaos.models import set_fault
from benchmarks.chaos.traffic import PATH
from benchmarks.chaos.world import World
from benchmarks.harness import WRK, parse_wrk

__all__ = ["FAULTS", "Context", "Fault", "by_name"]

MiB = 1024 * 1024


@dataclass
class Context:
    """What a fault may act on: the world, the server under test, its measured capacity
    (answers/s) and the request pool (bodies for load generators)."""

    world: World
    url: str
    capacity: float
    pool: Sequence[bytes]
    workdir: Path
    records_db: str | None = None  # where the records are, when not in the world's database


class Fault(Protocol):
    name: str
    what: str

    def inject(self, ctx: Context) -> None: ...

    def clear(self, ctx: Context) -> None: ...

    def note(self) -> str: ...


class _Quiet:
    """A fault without traffic of its own: nothing to note."""

    def note(self) -> str:
        return ""


@dataclass
class ModelFault(_Quiet):
    """The primary model misbehaves (``raise``, ``hang`` or ``slow 10``) until cleared."""

    name: str
    mode: str
    what: str

    def inject(self, ctx: Context) -> None:
        set_fault(ctx.world.fault_file, self.mode)

    def clear(self, ctx: Context) -> None:
        set_fault(ctx.world.fault_file, "ok")


class TableVanishes(_Quiet):
    name = "source-table-vanishes"
    what = "the features' source table is renamed away (as a bad migration would), then back"

    def inject(self, ctx: Context) -> None:
        ctx.world.psql("ALTER TABLE transactions RENAME TO transactions_vanished")

    def clear(self, ctx: Context) -> None:
        ctx.world.psql("ALTER TABLE transactions_vanished RENAME TO transactions")


class SourceHangs(_Quiet):
    name = "source-hangs"
    what = "another session holds LOCK TABLE transactions (ACCESS EXCLUSIVE): every read of the source blocks"

    def __init__(self) -> None:
        self._conn: Any = None

    def inject(self, ctx: Context) -> None:
        import psycopg

        self._conn = psycopg.connect(ctx.world.pg.url, connect_timeout=5)
        self._conn.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")  # held until rollback

    def clear(self, ctx: Context) -> None:
        if self._conn is not None:
            self._conn.rollback()
            self._conn.close()
            self._conn = None


class RedisKilled(_Quiet):
    name = "redis-killed"
    what = "the Redis server (cache tier 2, invalidations) is SIGKILLed, then started again on its port"

    def inject(self, ctx: Context) -> None:
        ctx.world.redis.kill()

    def clear(self, ctx: Context) -> None:
        ctx.world.redis.start()


class PostgresKilled(_Quiet):
    name = "postgres-killed"
    what = "PostgreSQL (registry, feature source, prediction log) stops at once (pg_ctl -m immediate), then starts again"

    def inject(self, ctx: Context) -> None:
        ctx.world.pg.kill()

    def clear(self, ctx: Context) -> None:
        ctx.world.pg.start()


@dataclass
class _Wrk:
    """wrk in the background with a Lua script; its report read when it ends."""

    name: str
    what: str
    result: str = ""
    process: subprocess.Popen[str] | None = None

    def _start(self, ctx: Context, script: str, connections: int, seconds: float) -> None:
        path = ctx.workdir / f"{self.name}.lua"
        path.write_text(script)
        argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", "--latency", "-s", str(path), ctx.url + PATH]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def clear(self, ctx: Context) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(2)  # SIGINT: wrk stops and prints its report
        try:
            out, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        self.process = None
        try:
            report = parse_wrk(out)
        except RuntimeError:
            self.result = "wrk: " + out.strip().replace("\n", " ")[-200:]
            return
        self.result = (
            f"load: {report.requests_per_s:,.0f} req/s sent, {report.requests - report.non2xx:,} of "
            f"{report.requests:,} answered 2xx, p99 {report.p99_ms:,.0f} ms"
        )

    def note(self) -> str:
        return self.result


def _lua_bodies(pool: Sequence[bytes], n: int = 200) -> str:
    bodies = ",\n".join(f"[[{b.decode()}]]" for b in pool[:n])
    return f"local bodies = {{\n{bodies}\n}}\n"


@dataclass
class Overload(_Wrk):
    """Requests arriving at ``factor`` times the measured capacity: wrk with many paced
    connections (each waits ``delay`` between its requests, so the arrival rate holds
    while the server sheds what it cannot serve)."""

    factor: float = 2.0
    seconds: float = 120.0
    delay_ms: int = 250

    def inject(self, ctx: Context) -> None:
        rate = self.factor * ctx.capacity
        connections = max(8, min(1500, round(rate * self.delay_ms / 1000)))
        delay = connections / rate * 1000  # ms between one connection's requests
        script = (
            _lua_bodies(ctx.pool)
            + 'local i = 0\nwrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            + f'request = function()\n  i = i + 1\n  return wrk.format(nil, "{PATH}", nil, bodies[(i % #bodies) + 1])\nend\n'
            + f"delay = function()\n  return {delay:.1f}\nend\n"
        )
        self._start(ctx, script, connections, self.seconds)


@dataclass
class MalformedJson(_Wrk):
    """Truncated JSON bodies as fast as 16 connections can send them."""

    seconds: float = 120.0

    def inject(self, ctx: Context) -> None:
        script = (
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            'wrk.body = [[{"entities": [{"card_id": 1042}], "values": [{"amount": 12.5, "merchant_cat]]\n'
        )
        self._start(ctx, script, 16, self.seconds)


@dataclass
class _Background:
    """A fault driven by a thread of this process until cleared."""

    name: str
    what: str
    counts: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _spawn(self, target: Any, n: int = 1) -> None:
        self._stop.clear()
        self.counts = {}
        self._threads = [threading.Thread(target=target, daemon=True, name=f"chaos-{self.name}") for _ in range(n)]
        for t in self._threads:
            t.start()

    def clear(self, ctx: Context) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def note(self) -> str:
        return ", ".join(f"{k}: {v:,}" for k, v in sorted(self.counts.items()))


@dataclass
class Connections(_Background):
    """``idle`` connections that never send a byte, and ``slow`` ones that send a request's
    head one byte a second (slowloris); each is opened again as soon as the server closes it."""

    idle: int = 0
    slow: int = 0

    def inject(self, ctx: Context) -> None:
        host, port = ctx.url.removeprefix("http://").split(":")
        self._spawn(lambda: asyncio.run(self._hold(host, int(port))))

    async def _hold(self, host: str, port: int) -> None:
        head = f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nX-Padding: " + "a" * 4000

        async def one(slow: bool) -> None:
            while not self._stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    self._count("connect failed")
                    await asyncio.sleep(0.5)
                    continue
                self._count("opened")
                try:
                    await self._occupy(reader, writer, head if slow else "")
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()

        await asyncio.gather(*(one(False) for _ in range(self.idle)), *(one(True) for _ in range(self.slow)))

    async def _occupy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str) -> None:
        """Hold one connection (sending ``head`` a byte a second) until the server closes
        or answers it, or the fault clears."""
        sent = 0
        while not self._stop.is_set():
            if sent < len(head):
                writer.write(head[sent].encode())
                sent += 1
                try:
                    await writer.drain()
                except OSError:
                    self._count("closed by the server")
                    return
            try:
                data = await asyncio.wait_for(reader.read(1024), 1.0)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            self._count("answered" if data else "closed by the server")
            return


@dataclass
class BigBodies(_Background):
    """``senders`` clients posting 8 MiB bodies (the default body limit exactly) back to back."""

    senders: int = 4

    def inject(self, ctx: Context) -> None:
        head = b'{"entities": [{"card_id": 1042}], "values": [{"amount": 12.5, "merchant_category": "'
        tail = b'"}]}'
        body = head + b"x" * (8 * MiB - len(head) - len(tail)) + tail

        def send() -> None:
            with httpx.Client(base_url=ctx.url, timeout=30) as client:
                while not self._stop.is_set():
                    try:
                        response = client.post(PATH, content=body, headers={"content-type": "application/json"})
                        self._count(f"status {response.status_code}")
                    except httpx.HTTPError as exc:
                        self._count(type(exc).__name__)

        self._spawn(send, self.senders)


@dataclass
class DiskFull(_Quiet):
    """The prediction log's spool file system (its tmpfs) is filled to the last byte."""

    name: str = "spool-disk-full"
    what: str = "the file system under the prediction log's spool is full (a filler file on its tmpfs), then freed"

    def inject(self, ctx: Context) -> None:
        filler = ctx.world.spool / ".filler"  # hidden: the log never takes it for a spool
        # Unbuffered, in ever smaller pieces, so not even a small record fits afterwards.
        with filler.open("wb", buffering=0) as out:
            for size in (MiB, 4096, 64, 1):
                try:
                    while True:
                        out.write(b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise

    def clear(self, ctx: Context) -> None:
        (ctx.world.spool / ".filler").unlink(missing_ok=True)


class ReplicaKilled(_Quiet):
    """One of three replicas behind nginx SIGKILLed (a crash: nothing flushed), then
    started again. The cluster is ``tests/local_cluster.py``'s (``make cluster``), on the
    world's PostgreSQL server and Redis, with the chaos project and models; the probe
    speaks to nginx."""

    name = "replica-sigkill"
    what = "one of 3 replicas behind nginx is SIGKILLed, then started again"

    def __init__(self) -> None:
        self._cluster: Any = None

    @contextlib.contextmanager
    def cluster(self, ctx: Context) -> Iterator[Context]:
        """The cluster, started, and the context the fault runs in (the probe on nginx)."""
        from tests.local_cluster import LocalCluster

        from benchmarks.chaos.world import PROJECT

        world = ctx.world
        admin = world.pg.url  # its "postgres" database: the cluster makes one of its own beside it
        with LocalCluster(ctx.workdir / "cluster", project=PROJECT, pg_admin_url=admin, redis_url=world.redis.url, access_log=False) as cluster:
            settings = cluster.settings()
            _load_transactions(world, settings.resolved_db_url())
            world.register_models(settings)
            cluster.start()
            self._cluster = cluster
            try:
                yield dataclasses.replace(ctx, url=cluster.url, records_db=cluster.db_url)
            finally:
                self._cluster = None

    def inject(self, ctx: Context) -> None:
        self._cluster.kill(0)

    def clear(self, ctx: Context) -> None:
        self._cluster.restart(0)


def _load_transactions(world: World, db_url: str) -> None:
    import runpy

    from benchmarks.chaos.world import FRAUD

    runpy.run_path(str(FRAUD / "generate.py"))["load"](world.frame, db_url)


FAULTS: list[Any] = [
    ModelFault("model-raises", "raise", "the primary model raises on every call"),
    ModelFault("model-hangs", "hang", "every call of the primary model blocks until the fault clears"),
    ModelFault("model-10x-slower", "slow 10", "every call of the primary model takes 10 times as long"),
    TableVanishes(),
    SourceHangs(),
    RedisKilled(),
    PostgresKilled(),
    Overload("overload-2x", "requests arrive at twice the measured capacity", factor=2.0),
    Overload("overload-10x", "requests arrive at ten times the measured capacity", factor=10.0),
    Connections("slowloris", "200 clients send a request head one byte a second (slowloris)", slow=200),
    Connections("idle-2000", "2,000 connections opened and left idle", idle=2000),
    BigBodies("bodies-8mib", "4 clients post 8 MiB bodies (the body limit) back to back"),
    MalformedJson("malformed-json", "16 connections send truncated JSON as fast as they can"),
    DiskFull(),
    ReplicaKilled(),
]
PENDING: dict[str, str] = {}


def by_name(names: Sequence[str] | None) -> list[Any]:
    if not names:
        return list(FAULTS)
    known = {f.name: f for f in FAULTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known[n] for n in names]

