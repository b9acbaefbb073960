"""Issue 15: what the memory budget costs: per request, per load and unload, per collection.

Run from the repository root::

    PYTHONPATH=src:. python -m benchmarks.bench_resources [--versions 8] [--rounds 4] [--calls 200000]

No server and no wrk: the app runs in process. Three figures:

- **a request's tracking**: the ``Tracked`` stage at the top of a chain (calls in flight,
  last use, the call limit) against the same chain without it, per call, over ``--calls``
  calls of a stage that does nothing (the difference is what tracking adds);
- **a load and unload cycle**: ``--versions`` versions of a model holding 4 MB, loaded round
  robin ``--rounds`` times under a budget for two, one call each: the mean time per load
  (each unloading the least recently used version first), how many full garbage
  collections the unloads needed (none when reference counting frees the models), and the
  memory each load measured;
- **a full collection**: unfreezing, collecting and freezing again every object of a
  process that imported the server and scikit-learn (what an unload costs when its model
  is caught in a reference cycle).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CELLS = 500_000  # float64 values per version: 4,000,000 bytes


class Ballast:
    """A model holding ``CELLS`` random float64 values; answers each row's sum + offset."""

    def __init__(self, offset: float, seed: int) -> None:
        self.weights = np.random.default_rng(seed).random(CELLS)
        self.offset = offset

    def predict(self, x: Any) -> Any:
        return np.asarray(x, dtype=np.float64).sum(axis=1) + self.offset


@dataclass(frozen=True)
class Options:
    versions: int = 8
    rounds: int = 4
    calls: int = 200_000


class _Nothing:
    async def __call__(self, exchange: Any) -> None:
        return None


async def _tracking_ns(calls: int) -> tuple[float, float]:
    from stalwart.serving.chains import Tracked
    from stalwart.serving.policies import ChainSpec
    from stalwart.serving.residency import Usage

    bare = _Nothing()
    tracked = Tracked(bare, Usage(sys.maxsize, 0.0), sys.maxsize, ChainSpec("/v2", "bench"), "bench", 1, None)  # type: ignore[arg-type]
    best: dict[str, float] = {}
    for _ in range(3):
        for name, stage in (("bare", bare), ("tracked", tracked)):
            began = time.perf_counter_ns()
            for _ in range(calls):
                await stage(None)  # type: ignore[arg-type]
            per_call = (time.perf_counter_ns() - began) / calls
            best[name] = min(best.get(name, per_call), per_call)
    return best["bare"], best["tracked"]


async def _cycles(options: Options) -> dict[str, Any]:
    from stalwart.config import Settings
    from stalwart.pipeline import Exchange
    from stalwart.registry import Registry
    from stalwart.serving import repository as repository_module
    from stalwart.serving.app import create_app

    home = Path(tempfile.mkdtemp(prefix="bench-resources-"))
    settings = Settings(
        home=home, log_level="warning", log_format="json", preload=False, registry_poll_seconds=3600,
        model_memory=2 * CELLS * 8 + CELLS * 4,
    )
    registry = Registry.open(settings)
    for v in range(1, options.versions + 1):
        registry.register("ballast", Ballast(1000.0 * v, v), sample=np.ones((2, 3)), trust_pickle=True)
    full_collections = 0
    real_unfreeze = gc.unfreeze

    class _CountingGC:
        def __getattr__(self, name: str) -> Any:
            return getattr(gc, name)

        def unfreeze(self) -> None:
            nonlocal full_collections
            full_collections += 1
            real_unfreeze()

    repository_module.gc = _CountingGC()  # type: ignore[assignment]
    app = create_app(settings, registry=registry)
    loads: list[float] = []
    memory: list[int] = []
    try:
        async with app.router.lifespan_context(app):
            repo, chains = app.state.repository, app.state.plane.chains
            spec = app.state.plane.policy.model_chain("ballast")
            for _ in range(options.rounds):
                for v in range(1, options.versions + 1):
                    began = time.perf_counter()
                    loaded = await repo.get("ballast", v)
                    loads.append(time.perf_counter() - began)
                    memory.append(loaded.memory)
                    exchange = Exchange(request_id="bench", inputs={"input-0": np.ones((1, 3))}, rows=1, outputs=("predict",))
                    await chains.get(spec, loaded)(exchange)
                    del loaded, exchange
            evictions = repo.evictions
    finally:
        repository_module.gc = gc  # type: ignore[assignment]
        registry.db.dispose()
    return {"loads": loads, "memory": memory, "evictions": evictions, "full_collections": full_collections}


def _full_collection_s() -> tuple[int, float]:
    for module in ("sklearn.ensemble", "sklearn.linear_model"):  # what a server typically has imported
        importlib.import_module(module)

    gc.collect()
    gc.freeze()
    times = []
    for _ in range(3):
        began = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        times.append(time.perf_counter() - began)
    return len(gc.get_objects()) + gc.get_freeze_count(), statistics.median(times)


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    bare, tracked = asyncio.run(_tracking_ns(options.calls))
    cycles = asyncio.run(_cycles(options))
    objects, collection = _full_collection_s()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    loads_ms = [s * 1000 for s in cycles["loads"]]
    mib = [m / 2**20 for m in cycles["memory"]]
    return "\n".join([
        "# Resources: what the memory budget costs (issue 15)",
        "",
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| a call through a stage doing nothing | {bare:.0f} ns |",
        f"| the same with `Tracked` on top | {tracked:.0f} ns (+{tracked - bare:.0f} ns) |",
        f"| loads of a 4 MB version, each unloading one first ({len(loads_ms)} loads) | median {statistics.median(loads_ms):.1f} ms, max {max(loads_ms):.1f} ms |",
        f"| versions unloaded / full collections they needed | {cycles['evictions']} / {cycles['full_collections']} |",
        f"| memory measured per load (4,000,000-byte array) | median {statistics.median(mib):.2f} MiB, min {min(mib):.2f}, max {max(mib):.2f} |",
        f"| a full collection (unfreeze, collect, freeze) over {objects:,} objects | {collection * 1000:.0f} ms |",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=Options.versions)
    parser.add_argument("--rounds", type=int, default=Options.rounds)
    parser.add_argument("--calls", type=int, default=Options.calls)
    args = parser.parse_args()
    print(run(Options(versions=args.versions, rounds=args.rounds, calls=args.calls)))


if __name__ == "__main__":
    main()
