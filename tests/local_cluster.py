"""A local cluster: N ``stalwart serve`` replicas behind nginx, sharing PostgreSQL and Redis.

What ``make cluster`` (``scripts/cluster``), the cluster tests (``tests/cluster``) and the
cluster benchmark (``python -m benchmarks cluster``) run. Everything listens on loopback
ports chosen free, every process is started and stopped by its id, and what the cluster
owns outside its directory (a PostgreSQL database made for it, a Redis key namespace of its
own) is removed when it stops. docs/cluster.md describes it.

The replicas share, as replicas on Kubernetes would:

- the PostgreSQL database: registry, rollout state and routes, prediction log (the ``sql``
  sink), live profiles, audit log, and the example's source tables;
- Redis: the feature cache's second tier and the invalidation bus (``STALWART_REDIS_URL``,
  under a namespace of the cluster's);
- one ``STALWART_HOME``, as a shared volume: the model artifacts, and the prediction log's
  spools (one per process; a replica that starts delivers what a dead one left undelivered).

nginx has no active health checks (those are nginx Plus's), so the cluster does what a
Kubernetes Service does with readiness probes: every ``readiness_seconds`` it asks each
replica ``/v2/health/ready`` and takes those that fail twice in a row out of nginx's rotation
(a reload), putting them back at their first success. A replica told to stop (SIGTERM)
answers 503 there while it drains, so it leaves the rotation before it stops accepting.
A reload closes the clients' idle keep-alive connections, so by default nginx closes each
client connection after its answer (``client_keepalive``; the benchmark keeps them).

>>> with LocalCluster(Path("/tmp/c"), project=FRAUD_PROJECT) as cluster:   # doctest: +SKIP
...     load_fraud(cluster.settings())
...     cluster.start()
...     httpx.post(cluster.url + "/v1/deployments/fraud/predict", json=...)
"""

from __future__ import annotations

import datetime as dt
import os
import runpy
import secrets
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from pydantic import SecretStr

from stalwart.config import Settings
from tests.cache.conftest import cleanup_namespace
from tests.nginx import Nginx
from tests.processes import ServeProcess
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
FRAUD_ROOT = ROOT / "examples" / "fraud"
FRAUD_PROJECT = FRAUD_ROOT / "project.py"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
KEEP_ALIVE_SECONDS = 5.0
"""The replicas' idle keep-alive (``STALWART_KEEP_ALIVE_SECONDS``); nginx closes its idle
connections to them a second sooner, so it never sends a request down one a replica is
closing."""

__all__ = ["FRAUD_PROJECT", "LocalCluster", "fraud_project", "load_fraud", "train_fraud", "v2_body"]


class LocalCluster:
    """``replicas`` ``stalwart serve`` processes and nginx in front, files in ``directory``.

    :meth:`create` makes the database and the home (a context manager's entry does it), so
    a caller can load data and register models (:meth:`settings`) before :meth:`start`.
    ``env`` adds ``STALWART_*`` settings of every replica (over the cluster's own).
    :meth:`stop` (the exit) stops everything and drops the database and the namespace.
    """

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 3,
        project: Path | None = None,
        env: Mapping[str, str] | None = None,
        pg_admin_url: str = PG_ADMIN_URL,
        redis_url: str = REDIS_URL,
        port: int | None = None,
        access_log: bool = True,
        client_keepalive: bool = False,
        readiness_seconds: float = 0.2,
    ) -> None:
        self.directory = directory
        self.readiness_seconds = readiness_seconds
        self.rotation: list[tuple[float, frozenset[str]]] = []  # (time.time(), replicas out of rotation) at each change
        self.held_out: frozenset[int] = frozenset()  # replicas kept out of rotation, ready or not
        self._not_ready: set[int] = set()  # as the readiness watch last saw them
        self._halt = threading.Event()
        self._rotating = threading.Lock()
        self._watch: threading.Thread | None = None
        self.home = directory / "home"
        self.project = project
        self.pg_admin_url = pg_admin_url
        self.redis_url = redis_url
        suffix = uuid.uuid4().hex[:10]
        self.database = f"stalwart_cluster_{suffix}"
        self.db_url = pg_admin_url.rsplit("/", 1)[0] + "/" + self.database
        self.namespace = f"cluster-{suffix}"
        self.token = secrets.token_urlsafe(24)
        self._created = False
        self.replicas = [ServeProcess(self._env(env or {}), directory / f"replica-{i}.log") for i in range(replicas)]
        self.nginx = Nginx(
            directory / "nginx", port or free_port(), [f"127.0.0.1:{r.port}" for r in self.replicas],
            upstream_keepalive_seconds=KEEP_ALIVE_SECONDS - 1, client_keepalive=client_keepalive, access_log=access_log,
        )

    @property
    def url(self) -> str:
        """The load balancer's URL: where clients send requests."""
        return self.nginx.url

    def _env(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {
            "STALWART_HOME": str(self.home),
            "STALWART_DB_URL": self.db_url,
            "STALWART_REDIS_URL": self.redis_url,
            "STALWART_CACHE_NAMESPACE": self.namespace,
            "STALWART_ADMIN_TOKEN": self.token,
            "STALWART_KEEP_ALIVE_SECONDS": f"{KEEP_ALIVE_SECONDS:g}",
            "STALWART_DRAIN_SECONDS": "1",
            "STALWART_ACCESS_LOG": "false",  # nginx logs every request
        }
        if self.project is not None:
            env["STALWART_PROJECT"] = str(self.project)
        return {**env, **extra}

    def settings(self, **overrides: Any) -> Settings:
        """Settings of the cluster's registry, database and home, for code that registers
        models, writes source rows or reads records from this process."""
        values: dict[str, Any] = {
            "home": self.home, "db_url": SecretStr(self.db_url), "redis_url": SecretStr(self.redis_url),
            "cache_namespace": self.namespace, "admin_token": SecretStr(self.token), "project": self.project,
        }
        return Settings(**{**values, **overrides})

    # --- lifecycle ----------------------------------------------------------------------

    def create(self) -> None:
        """Make the directory, the home and the database (empty; the first process to open
        it migrates it)."""
        import psycopg

        self.directory.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(mode=0o700, exist_ok=True)
        token_file = self.directory / "admin_token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        with psycopg.connect(self.pg_admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        self._created = True

    def start(self, timeout: float = 120.0) -> None:
        """Start every replica (side by side), wait until each is ready, then nginx."""
        for replica in self.replicas:
            replica.start()
        for replica in self.replicas:
            replica.wait_ready(timeout)
        self.nginx.start()
        self._halt.clear()
        self._watch = threading.Thread(target=self._watch_readiness, name="cluster-readiness", daemon=True)
        self._watch.start()

    def stop(self) -> None:
        """Stop nginx, then the replicas (SIGTERM to all, then wait: they drain side by
        side), then drop the database and the Redis namespace."""
        self._halt.set()
        if self._watch is not None:
            self._watch.join(timeout=10)
            self._watch = None
        self.nginx.stop()
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.terminate()
        with ThreadPoolExecutor(len(self.replicas) or 1) as pool:
            list(pool.map(lambda r: r.stop(), self.replicas))
        if self._created:
            self._created = False
            _drop_database(self.pg_admin_url, self.database)
            cleanup_namespace(self.redis_url, self.namespace)

    def __enter__(self) -> LocalCluster:
        try:
            self.create()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def address(self, index: int) -> str:
        """Replica ``index`` as nginx names it (``127.0.0.1:port``)."""
        return f"127.0.0.1:{self.replicas[index].port}"

    def serve_with(self, count: int) -> None:
        """Keep only the first ``count`` replicas in nginx's rotation (the others run on,
        idle): a cluster scaled to ``count`` without a replica's start-up in between."""
        if not 1 <= count <= len(self.replicas):
            raise ValueError(f"count must be between 1 and {len(self.replicas)}")
        self.held_out = frozenset(range(count, len(self.replicas)))
        self._rotate(self._not_ready)

    def _rotate(self, not_ready: set[int]) -> None:
        down = not_ready | self.held_out
        if len(down) == len(self.replicas):
            down = set(self.held_out)  # none ready: better to try them than to fail every request
        addresses = frozenset(self.address(i) for i in down)
        with self._rotating:  # the watch's thread and serve_with's
            if self.nginx.set_down(addresses):
                self.rotation.append((time.time(), addresses))

    def _watch_readiness(self) -> None:
        failures = dict.fromkeys(range(len(self.replicas)), 0)
        probes = [httpx.Client(base_url=r.url, timeout=1.0) for r in self.replicas]
        try:
            while not self._halt.wait(self.readiness_seconds):
                for i, probe in enumerate(probes):
                    failures[i] = 0 if _ready(probe) else failures[i] + 1
                self._not_ready = {i for i, count in failures.items() if count >= 2}
                self._rotate(self._not_ready)
        finally:
            for probe in probes:
                probe.close()

    # --- one replica --------------------------------------------------------------------

    def pid(self, index: int) -> int:
        process = self.replicas[index].process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"replica {index} is not running")
        return process.pid

    def kill(self, index: int) -> tuple[float, float]:
        """SIGKILL replica ``index`` (a crash: nothing flushed, no goodbye) and reap it;
        returns when the signal was sent and when the process was gone (``time.time()``)."""
        replica = self.replicas[index]
        pid = self.pid(index)
        sent = time.time()
        os.kill(pid, signal.SIGKILL)
        assert replica.process is not None
        replica.process.wait(timeout=10)
        return sent, time.time()

    def terminate(self, index: int) -> None:
        """SIGTERM replica ``index``: it drains and exits by itself (wait with :meth:`wait`)."""
        os.kill(self.pid(index), signal.SIGTERM)

    def wait(self, index: int, timeout: float = 30.0) -> int:
        """Wait for replica ``index`` to exit; its exit status (negative: the signal)."""
        process = self.replicas[index].process
        if process is None:
            raise RuntimeError(f"replica {index} was never started")
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"replica {index} did not exit in {timeout} s:\n{self.replicas[index].tail()}") from None

    def restart(self, index: int, timeout: float = 120.0) -> None:
        """Start replica ``index`` again, on its port, and wait until it is ready."""
        replica = self.replicas[index]
        if replica.process is not None and replica.process.poll() is None:
            raise RuntimeError(f"replica {index} is still running")
        replica.start()
        replica.wait_ready(timeout)


def fraud_project(directory: Path, *, max_queue_wait: float = 5.0) -> Path:
    """The example's project file, copied into ``directory`` with its deployment shedding
    only past ``max_queue_wait`` seconds of queue wait (not the default 100 ms): on a
    machine shared with other jobs (and the load generator), a request shed because
    something else took the cores is not what the cluster's tests and benchmark measure."""
    text = FRAUD_PROJECT.read_text()
    pinned = '"fraud", model="fraud:1",'
    if pinned not in text:
        raise RuntimeError(f"the fraud project no longer contains {pinned!r}")
    path = directory / "project.py"
    path.write_text(text.replace(pinned, pinned + f' shedding={{"max_queue_wait": {max_queue_wait:g}}},'))
    return path


def load_fraud(settings: Settings, *, cards: int = 1500, days: int = 45, max_iter: int = 300, seed: int = 7) -> dict[str, Any]:
    """The fraud example in the cluster's database, as ``stalwart demo`` sets it up:
    ``days`` of transactions of ``cards`` cards up to this hour in the ``transactions``
    table, and the model trained on them registered as ``fraud:1`` (``max_iter`` trees).
    Returns the transactions (``frame``), the version and its metrics."""
    generator = runpy.run_path(str(FRAUD_ROOT / "generate.py"))
    end = dt.datetime.now(tz=dt.UTC).replace(minute=0, second=0, microsecond=0)
    frame = generator["generate"](n_cards=cards, days=days, end=end, seed=seed)
    generator["load"](frame, settings.resolved_db_url())
    version, metrics = train_fraud(frame, settings, max_iter=max_iter)
    return {"frame": frame, "version": version, "metrics": metrics}


def train_fraud(frame: Any, settings: Settings, *, max_iter: int = 300) -> tuple[Any, dict[str, float]]:
    """Train the example's model on ``frame`` and register it as the next version of
    ``fraud``: ``(version, metrics)``."""
    trainer = runpy.run_path(str(FRAUD_ROOT / "train.py"))
    result: tuple[Any, dict[str, float]] = trainer["train"](frame, settings, max_iter=max_iter)
    return result


def v2_body(metadata: dict[str, Any]) -> dict[str, Any]:
    """One row of zeros (empty strings for BYTES) for a model's ``/v2`` inputs, as its
    metadata (``GET /v2/models/{m}``) declares them."""
    inputs = []
    for spec in metadata["inputs"]:
        width = 1
        for dim in spec["shape"][1:]:
            width *= dim
        value: Any = "" if spec["datatype"] == "BYTES" else 0
        inputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": [1, *spec["shape"][1:]], "data": [value] * width})
    return {"inputs": inputs}


def _drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ready(probe: httpx.Client) -> bool:
    try:
        return probe.get("/v2/health/ready").status_code == 200
    except httpx.HTTPError:
        return False
