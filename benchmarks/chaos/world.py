"""Everything the chaos run's fraud deployment stands on, private to one run.

A :class:`World` owns, under one temporary directory:

- a PostgreSQL server of its own (``tests/private_pg.py``): the registry, the
  ``transactions`` table the features read, and the prediction log;
- a redis-server of its own (``tests/private_redis.py``): the feature cache's shared tier
  and its invalidation messages;
- the prediction log's spool on a tmpfs of its own (``mount -t tmpfs``), so the disk-full
  fault fills a small file system and never the machine's;
- the fraud example's transactions (generated), its gradient-boosted model trained the way
  ``examples/fraud/train.py`` trains it (a :class:`~benchmarks.chaos.models.FaultSwitch`,
  ``fraud:1``) and a logistic regression as its fallback (``fraud-lite:1``);
- ``stalwart serve`` on ``benchmarks/chaos/project.py`` (the deployment with its whole
  ladder), and, for the healthy answers every fault is compared with, a reference server
  on the same data without any fault.

Nothing listens beyond loopback, and every server is stopped when the world closes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.private_pg import PrivatePostgres
from tests.private_redis import PrivateRedis

from benchmarks.chaos.models import FaultSwitch, set_fault
from benchmarks.harness import Server, bench_env, free_port, stalwart_command, start_server

ROOT = Path(__file__).resolve().parents[2]
PROJECT = Path(__file__).with_name("project.py")
REFERENCE = Path(__file__).with_name("reference.py")
FRAUD = ROOT / "examples" / "fraud"
TRUSTED = ["benchmarks.chaos.models.FaultSwitch"]
READY_TIMEOUT = 180.0  # seconds; a server starts in a few, but a machine shared with other work can take 30 or more


@dataclass(frozen=True)
class WorldOptions:
    """How big the world is: cards and days of generated transactions, the spool's tmpfs."""

    cards: int = 1000
    days: int = 35
    seed: int = 7
    spool_size: str = "64m"
    extra_env: Mapping[str, str] | None = None  # more STALWART_* for the server under test


class World:
    """The private services, data, models and servers of one chaos run (a context manager)."""

    def __init__(self, options: WorldOptions | None = None, root: Path | None = None) -> None:
        self.options = options or WorldOptions()
        self.root = root or Path(tempfile.mkdtemp(prefix="stalwart-chaos-"))
        self.home = self.root / "home"
        self.spool = self.home / "spool"
        self.fault_file = self.root / "fault"
        self.token = secrets.token_hex(16)
        self._pg: PrivatePostgres | None = None
        self._redis: PrivateRedis | None = None
        self.server: Server | None = None
        self.frame: Any = None
        self.training: Any = None  # the training set both models learned from
        self.models: tuple[Any, Any] = (None, None)  # the primary (a FaultSwitch) and the fallback
        self._mounted = False

    @property
    def pg(self) -> PrivatePostgres:
        if self._pg is None:
            raise RuntimeError("the world is not open: no PostgreSQL yet")
        return self._pg

    @property
    def redis(self) -> PrivateRedis:
        if self._redis is None:
            raise RuntimeError("the world is not open: no Redis yet")
        return self._redis

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> World:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Start PostgreSQL and Redis, mount the spool, make the data and models."""
        pg_root = self.root / "pg"
        pg_root.mkdir(parents=True)
        shutil.chown(self.root, "postgres", "postgres")  # runuser postgres must reach pg/
        shutil.chown(pg_root, "postgres", "postgres")
        self._pg = PrivatePostgres(pg_root)
        self._pg.init()
        self._pg.start()
        self._redis = PrivateRedis()
        self._redis.start()
        self.spool.mkdir(parents=True)
        self._mount_spool()
        set_fault(self.fault_file, "ok")
        self.frame = self._prepare()

    def close(self) -> None:
        for server in (self.server,):
            if server is not None:
                server.stop()
        self.server = None
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.spool)], check=False, capture_output=True)
            self._mounted = False
        if self._redis is not None:
            self._redis.kill()
        if self._pg is not None:
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(self._pg.bin / "pg_ctl"), "-D", str(self._pg.data), "-m", "immediate", "stop"],
                capture_output=True, timeout=60, check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def _mount_spool(self) -> None:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.options.spool_size},mode=0700", "tmpfs", str(self.spool)],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"cannot mount a tmpfs for the spool ({done.stderr.strip()}); the chaos run needs "
                f"root (mount -t tmpfs) for its disk-full fault"
            )
        self._mounted = True

    # --- data and models -------------------------------------------------------------------

    def settings(self) -> Any:
        from stalwart.config import Settings

        return Settings(home=self.home, db_url=self.pg.url, project=PROJECT)

    def _prepare(self) -> Any:
        """Generate the transactions into PostgreSQL, train and register both models."""
        import runpy

        from examples.fraud.train import training_events
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        import stalwart

        generator = runpy.run_path(str(FRAUD / "generate.py"))
        # Two hours before now: the hour windows are empty at serving time, so the healthy
        # answers do not move while the run lasts (the 24 h and 30 d windows barely do).
        end = dt.datetime.now(tz=dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(hours=2)
        options = self.options
        frame = generator["generate"](n_cards=options.cards, days=options.days, end=end, seed=options.seed)
        settings = self.settings()
        generator["load"](frame, settings.resolved_db_url())
        project = stalwart.load_project(PROJECT)
        features = [project.feature_sets["card_activity"], project.sources["txn"].field("amount")]  # type: ignore[attr-defined]
        events = training_events(frame, skip_days=min(30.0, options.days / 2))
        training = self.training = stalwart.build_training_set(events, features, timestamp="ts", label="is_fraud", settings=settings)
        model, _ = self.retrain(seed=7)
        lite = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        lite.fit(training.X, training.y)
        self.models = (model, lite)
        self.register_models(settings)
        return frame

    def register_models(self, settings: Any) -> None:
        """Register the world's two models (``fraud:1``, ``fraud-lite:1``) in the registry of
        ``settings`` (the world's, or a cluster's on the same PostgreSQL server)."""
        import stalwart

        model, lite = self.models
        registry = stalwart.Registry.open(settings)
        try:
            registry.register("fraud", model, training_set=self.training, trusted_types=TRUSTED, description="the fraud model, with a fault switch")
            registry.register("fraud-lite", lite, training_set=self.training, description="logistic regression: the fallback")
        finally:
            registry.db.dispose()

    def retrain(self, seed: int) -> tuple[FaultSwitch, Any]:
        """The example's model and hyperparameters (examples/fraud/train.py), with the fault
        switch, fitted on the world's training set; and that training set."""
        training = self.training
        model = FaultSwitch(max_iter=300, learning_rate=0.05, l2_regularization=1.0, early_stopping=False, random_state=seed)
        model.fit(training.X, training.y)
        model.fault_file = str(self.fault_file)
        return model, training

    # --- servers ---------------------------------------------------------------------------

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The server's environment: this process's, less any STALWART_* it had, plus the
        world's services."""
        env = {k: v for k, v in bench_env().items() if not k.startswith("STALWART_")}
        env.update({
            "STALWART_HOME": str(self.home),
            "STALWART_DB_URL": self.pg.url,
            "STALWART_REDIS_URL": self.redis.url,
            "STALWART_PROJECT": str(PROJECT),
            "STALWART_ADMIN_TOKEN": self.token,
            "STALWART_LOG_FORMAT": "json",
            "STALWART_LOG_LEVEL": "warning",
            **(self.options.extra_env or {}),
            **(extra or {}),
        })
        return env

    def start_server(self, name: str = "stalwart") -> Server:
        """``stalwart serve`` on the chaos project, ready; the world stops it on close."""
        if self.server is not None:
            raise RuntimeError("the server under test is already running")
        port = free_port()
        self.server = start_server(name, stalwart_command(port), self.env(), self.root)
        self.server.wait_ready(timeout=READY_TIMEOUT)
        return self.server

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @contextlib.contextmanager
    def reference(self) -> Any:
        """A second, healthy server on the same registry and data (``reference.py``: limits
        that never trip, no ladder), no Redis, its own home, no prediction log; its answers
        are what every fault's answers are compared with."""
        home = self.root / "reference"
        if not home.exists():
            home.mkdir()
            (home / "artifacts").symlink_to(self.home / "artifacts")  # the registry's artifacts live in a home
        env = {k: v for k, v in self.env().items() if k != "STALWART_REDIS_URL"}
        env.update({"STALWART_HOME": str(home), "STALWART_PROJECT": str(REFERENCE), "STALWART_PREDICTION_LOG": "off", "STALWART_ROLLOUT_CONTROLLER": "false", "STALWART_LIVE_PROFILES": "off"})
        port = free_port()
        server = start_server("reference", stalwart_command(port), env, self.root)
        try:
            server.wait_ready(timeout=READY_TIMEOUT)
            yield server
        finally:
            server.stop()

    def psql(self, statement: str) -> None:
        """Run one statement on the world's PostgreSQL (autocommit)."""
        import psycopg

        with psycopg.connect(self.pg.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def stored(self, request_ids: list[str], *, timeout: float = 30.0, db_url: str | None = None) -> set[str]:
        """Which of ``request_ids`` the prediction log has in PostgreSQL (the world's
        database, or ``db_url``), waiting up to ``timeout`` for its spool to drain (the sink
        retries with backoff after an outage)."""
        import psycopg

        wanted = set(request_ids)
        found: set[str] = set()
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg.OperationalError), psycopg.connect(db_url or self.pg.url, autocommit=True, connect_timeout=2) as conn:
                for start in range(0, len(request_ids), 5000):
                    chunk = request_ids[start:start + 5000]
                    rows = conn.execute("SELECT request_id FROM predictions WHERE request_id = ANY(%s)", (chunk,)).fetchall()
                    found |= {r[0] for r in rows}
            if wanted <= found or time.monotonic() > deadline:
                return found & wanted
            time.sleep(0.5)


def fds(pid: int) -> tuple[int, int]:
    """Open file descriptors of a process: all of them, and how many are sockets (client
    connections come and go with the load; a leak shows in the others)."""
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0, 0
    sockets = 0
    for entry in entries:
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return len(entries), sockets
