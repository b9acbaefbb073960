"""The feature cache end to end: ``POST /v1/deployments/fraud/predict`` through
``stalwart serve``, warm cache against no cache.

The fraud example (``--cards`` cards, ``--days`` days of transactions in SQLite, the
trained HistGradientBoosting model) is served by three ``stalwart serve`` processes on
the same home, differing only in ``card_activity``'s cache policy (a policy never changes
the FeatureSet's version, so the same model serves all three):

- ``no cache``: ``cache=False``, one SQL round trip per request;
- ``in-process``: the example's policy (TTL 1 min, in-process tier);
- ``Redis only``: the in-process tier off, Redis (127.0.0.1:6379, a private namespace).

Load: ``wrk`` (``/usr/bin/wrk``, 1 thread, ``--timeout 10s``, a Lua script giving each
request one card, cycling over every card), closed loop at 1 and 8 connections for
``--seconds`` each, after a pass over every card to warm the caches; ``--runs`` rounds
alternating the servers, medians reported. Then source calls saved: a Zipf-distributed card
stream (exponent s, over every card) sent by wrk at 8 connections for ``--zipf-seconds``
to the in-process server, its cache emptied first (``POST
/v1/features/card_activity/invalidate``); saved = 1 - source calls / lookups, from the
server's own cache metrics.

Run from a worktree (loopback only)::

    PYTHONPATH=src python -m benchmarks.bench_cache_e2e [--runs 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import runpy
import secrets
import statistics
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.load import closed_loop
from benchmarks.servers import ROOT, Server, serve
from stalwart.config import Settings

FRAUD = ROOT / "examples" / "fraud"
PATH = "/v1/deployments/fraud/predict"
POLICY = 'cache={"ttl": "1m", "max_staleness": "10m"}'
VARIANTS = {
    "no cache": "cache=False",
    "in-process": POLICY,
    "Redis only": 'cache={"ttl": "1m", "max_staleness": "10m", "memory": False}',
}
BODY = '{{"entities":[{{"card_id":{card}}}],"values":[{{"amount":25.0,"merchant_category":"groceries"}}]}}'
TOKEN = secrets.token_urlsafe(16)  # the servers' admin token, for invalidating between runs


def prepare(home: Path, cards: int, days: int) -> np.ndarray[Any, Any]:
    """Generate and load the transactions, train and register the model; the card ids."""
    settings = Settings(home=home, project=FRAUD / "project.py")
    generator = runpy.run_path(str(FRAUD / "generate.py"))
    trainer = runpy.run_path(str(FRAUD / "train.py"))
    end = dt.datetime.now(tz=dt.UTC).replace(minute=0, second=0, microsecond=0)
    frame = generator["generate"](n_cards=cards, days=days, end=end)
    generator["load"](frame, settings.resolved_db_url())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's notes on the small evaluation split
        trainer["train"](frame, settings)
    ids: np.ndarray[Any, Any] = np.sort(frame["card_id"].unique())
    return ids


def project_variant(directory: Path, policy: str) -> Path:
    text = (FRAUD / "project.py").read_text()
    if POLICY not in text:
        raise SystemExit(f"examples/fraud/project.py no longer declares {POLICY}; update this benchmark")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "project.py"
    path.write_text(text.replace(POLICY, policy))
    return path


def lua_script(path: Path, cards: list[int]) -> Path:
    """A wrk script sending one card per request, cycling over ``cards`` in order."""
    table = ",".join(str(c) for c in cards)
    path.write_text(
        f"""local cards = {{{table}}}
local i = 0
local headers = {{["Content-Type"] = "application/json"}}
request = function()
  i = i + 1
  local body = string.format('{BODY.format(card="%d")}', cards[(i - 1) % #cards + 1])
  return wrk.format("POST", "{PATH}", headers, body)
end
"""
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 (ms), and the share of non-2xx answers."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    latency = {q: float(v) * _UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (int(errors.group(1)) if errors else 0)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": latency["50"],
        "p99": latency["99"],
        "failed": failed / max(total, 1),
    }


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def warm(url: str, cards: list[int]) -> None:
    """One request per card (8 at a time), so every card is in the cache."""

    def body(i: int) -> bytes:
        return BODY.format(card=cards[i]).encode()

    outcomes, _ = asyncio.run(closed_loop(url, PATH, body, concurrency=8, duration=120, requests=len(cards)))
    failed = [o for o in outcomes if o.status != 200]
    if failed:
        raise SystemExit(f"warming {url} failed: {len(failed)} requests, e.g. status {failed[0].status}")


def zipf_stream(cards: np.ndarray[Any, Any], s: float, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    ranked = rng.permutation(cards)  # which card is the most popular: arbitrary
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** s
    stream: list[int] = rng.choice(ranked, size=n, p=weights / weights.sum()).tolist()
    return stream


def bench_zipf(server: Server, cards: np.ndarray[Any, Any], args: argparse.Namespace, scratch: Path) -> list[dict[str, float]]:
    out = []
    for s in args.zipf_s:
        saved = []
        lookups = []
        for run in range(args.runs):
            response = httpx.post(f"{server.url}/v1/features/card_activity/invalidate", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            response.raise_for_status()
            script = lua_script(scratch / f"zipf-{s}-{run}.lua", zipf_stream(cards, s, 50_000, seed=run))
            labels = {"feature_set": "card_activity"}
            before = [metric(server.url, "stalwart_cache_source_calls_total", **labels),
                      metric(server.url, "stalwart_cache_hits_total", tier="memory", **labels),
                      metric(server.url, "stalwart_cache_misses_total", tier="memory", **labels)]
            wrk(server.url, script, 8, args.zipf_seconds)
            after = [metric(server.url, "stalwart_cache_source_calls_total", **labels),
                     metric(server.url, "stalwart_cache_hits_total", tier="memory", **labels),
                     metric(server.url, "stalwart_cache_misses_total", tier="memory", **labels)]
            calls, hits, misses = (a - b for a, b in zip(after, before, strict=True))
            lookups.append(hits + misses)
            saved.append(1.0 - calls / (hits + misses))
        out.append({"s": s, "saved": statistics.median(saved), "lookups": statistics.median(lookups)})
    return out


def rounds(servers: dict[str, Server], script: Path, args: argparse.Namespace, cards: list[int]) -> Iterator[tuple[str, int, dict[str, float]]]:
    for run in range(args.runs):
        for name, server in servers.items():
            warm(server.url, cards)
            for connections in (1, 8):
                result = wrk(server.url, script, connections, args.seconds)
                print(f"  round {run + 1} {name:<11} c={connections}: {result['rps']:7.0f} req/s  p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms", flush=True)
                yield name, connections, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="each wrk run")
    parser.add_argument("--zipf-seconds", type=float, default=10.0)
    parser.add_argument("--zipf-s", type=float, nargs="+", default=[0.9, 1.1])
    parser.add_argument("--cards", type=int, default=1000)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-cache-e2e-"))
    home = scratch / "home"
    print(f"preparing the fraud example ({args.cards} cards, {args.days} days) ...", flush=True)
    cards = prepare(home, args.cards, args.days)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    base = {"STALWART_HOME": str(home), "STALWART_ADMIN_TOKEN": TOKEN, "STALWART_CACHE_NAMESPACE": namespace}
    script = lua_script(scratch / "cycle.lua", [int(c) for c in cards])
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        with ExitStack() as stack:
            servers: dict[str, Server] = {}
            for name, policy in VARIANTS.items():
                env = {**base, "STALWART_PROJECT": str(project_variant(scratch / name.replace(" ", "-"), policy))}
                if name == "Redis only":
                    env["STALWART_REDIS_URL"] = args.redis_url
                servers[name] = stack.enter_context(serve(env, scratch / f"{name.replace(' ', '-')}.log"))
            print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; wrk 1 thread, {args.seconds:g} s per run, "
                  f"{args.runs} rounds\n", flush=True)
            for name, connections, result in rounds(servers, script, args, [int(c) for c in cards]):
                results.setdefault((name, connections), []).append(result)
            zipf = bench_zipf(servers["in-process"], cards, args, scratch)
    finally:
        client = redis_sync.Redis.from_url(args.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
            if keys:
                client.unlink(*keys)
        finally:
            client.close()
    print(f"\nPOST {PATH}, one card per request over {len(cards)} cards, medians of {args.runs} runs")
    header = f"{'':<12}" + "".join(f"{f'c={c} req/s':>12}{'p50 ms':>8}{'p99 ms':>8}{'fail':>6}" for c in (1, 8))
    print(header)
    med: dict[tuple[str, int], dict[str, float]] = {
        key: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for key, runs in results.items()
    }
    for name in VARIANTS:
        line = f"{name:<12}"
        for c in (1, 8):
            m = med[(name, c)]
            line += f"{m['rps']:>12.0f}{m['p50']:>8.2f}{m['p99']:>8.2f}{m['failed'] * 100:>5.1f}%"
        print(line)
    for name in ("in-process", "Redis only"):
        ratios = "  ".join(
            f"c={c}: {med[(name, c)]['rps'] / med[('no cache', c)]['rps']:.2f}x req/s, "
            f"p50 {med[('no cache', c)]['p50'] / med[(name, c)]['p50']:.2f}x lower"
            for c in (1, 8)
        )
        print(f"{name} vs no cache: {ratios}")
    print(f"\nSource calls saved (in-process cache, TTL 1 min plus exact window expiry), Zipf over {len(cards)} cards, "
          f"wrk 8 connections for {args.zipf_seconds:g} s from an empty cache, medians of {args.runs} runs:")
    for row in zipf:
        print(f"  s={row['s']}: {row['saved'] * 100:.1f}% of {row['lookups']:.0f} lookups")


if __name__ == "__main__":
    main()
