"""The contestants both suites share: the demo models, their servers, the in-process call.

``Arena`` prepares a ``STALWART_HOME`` with the demo models in a temporary directory,
starts the requested servers on free loopback ports and stops them (and removes the
directory) on exit, whatever happens in between.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks.harness import (
    Server,
    Target,
    bench_env,
    free_port,
    lua_script,
    running,
    stalwart_command,
    start_server,
    uvicorn_command,
)
from benchmarks.models import (
    DEMO_MODELS,
    DemoModel,
    infer_body,
    infer_path,
    load_estimator,
    prepare_home,
)

MINIMAL = "minimal starlette"


@dataclass(frozen=True)
class InProcess:
    calls_per_s: float
    p50_ms: float
    p99_ms: float


def in_process(model: Any, x: Any, seconds: float) -> InProcess:
    """``model.predict_proba(x)`` called back to back for ``seconds``: the floor."""
    for _ in range(50):
        model.predict_proba(x)
    samples: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        t0 = time.perf_counter()
        model.predict_proba(x)
        now = time.perf_counter()
        samples.append((now - t0) * 1000)
    quantiles = statistics.quantiles(samples, n=100)
    return InProcess(len(samples) / (now - start), statistics.median(samples), quantiles[98])


class Arena:
    """The demo models (or those ``prepare`` registers) in a temporary home and the servers
    started on it."""

    def __init__(
        self,
        models: Sequence[DemoModel] = DEMO_MODELS,
        outputs: tuple[str, ...] | None = ("predict_proba",),
        prepare: Callable[[Path], Any] = prepare_home,
    ) -> None:
        self.models = list(models)
        self.workdir = Path(tempfile.mkdtemp(prefix="stalwart-bench-"))
        self.home = self.workdir / "home"
        self.x_test = prepare(self.home)
        self.body = infer_body(self.x_test[0], outputs)
        self.script = lua_script(self.workdir, self.body)
        self.servers: dict[str, Server] = {}

    def estimator(self, model: DemoModel) -> Any:
        return load_estimator(self.home, model.version)

    def add_stalwart(self, name: str, env: Mapping[str, str] | None = None, *, src: Path | None = None) -> Server:
        """``stalwart serve`` on this home, with ``env`` (``STALWART_*``) on top; ``src``: run
        another checkout's code (its ``src`` directory) instead of this tree's, on a home of
        its own with the same models registered by that code (its registry schema may be
        older than this tree's)."""
        port = free_port()
        home = self.home
        settings: dict[str, str] = {}
        if src is not None:
            settings["PYTHONPATH"] = os.pathsep.join((str(src), str(Path(__file__).resolve().parent.parent)))
            home = self.workdir / f"home-{len(self.servers)}"
            subprocess.run(
                [sys.executable, "-c", "import sys, pathlib; from benchmarks.models import prepare_home; prepare_home(pathlib.Path(sys.argv[1]))", str(home)],
                env=bench_env(settings), check=True, capture_output=True,
            )
        settings.update({"STALWART_HOME": str(home), "STALWART_LOG_FORMAT": "json"})
        settings.update(env or {})
        server = start_server(name, stalwart_command(port), bench_env(settings), self.workdir)
        self.servers[name] = server
        return server

    def add_minimal(self, model_file: Path | None = None) -> Server:
        """The minimal endpoint on this home's models, or on ``model_file`` (joblib) alone."""
        port = free_port()
        env = {"BENCH_HOME": str(self.home)}
        if model_file is not None:
            env["BENCH_MODEL_FILE"] = str(model_file)
        server = start_server(
            MINIMAL,
            uvicorn_command("benchmarks.minimal_app:create_app", port),
            bench_env(env),
            self.workdir,
        )
        self.servers[MINIMAL] = server
        return server

    def targets(self) -> dict[tuple[str, str], Target]:
        return {
            (name, model.key): Target(server, infer_path(model.version), self.script)
            for name, server in self.servers.items()
            for model in self.models
        }

    def __enter__(self) -> Arena:
        return self

    def start(self) -> Any:
        """Wait until every server added so far is ready (a context manager that stops them)."""
        return running(list(self.servers.values()))

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in self.servers.values():
            server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
