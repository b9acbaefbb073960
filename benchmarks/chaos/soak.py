"""``python -m benchmarks.chaos.soak`` (``make soak``): the fraud deployment under steady,
mixed traffic at half its measured capacity for a long time (30 minutes by default),
watched for slow leaks and slow decay.

Traffic, paced (wrk with connections that each wait their turn, so the rate holds): 70 %
``/v1/deployments/fraud/predict`` (the request pool) and 30 % ``/v2`` infer on the
deployment's model (features read back from ``/v1``), at half the measured capacity; and
beside it, one control call a second, in turn five transactions written through ``POST
/v1/sources/transactions/rows`` (each invalidates its card's cached features everywhere)
and labels for twenty recent requests through ``POST /v1/feedback``. A quarter of the way
in, a rollout starts (``fraud:2``, a retrained model, as the canary).

Every ``--sample`` seconds: the server's resident memory and open file descriptors, the
event loop's lag (the latency of ``GET /v2/health/live``, which does no work of its own,
so its latency is the time the loop took to get to it), and per window the p99 latency,
requests answered, and errors. Pass criteria (:func:`verdicts`), judged after a warm-up
(the first fifth):

- resident memory grows less than 5 % from the end of the warm-up to the end (the
  least-squares line through the samples, so one noisy sample does not decide);
- open file descriptors other than sockets do not grow (at most 10 more than at the end of
  the warm-up; sockets follow the client's connections);
- no 5xx answer but load shedding's, at most 1 % of the requests shed (503 with
  ``Retry-After``: at half capacity, only a machine busy with other work sheds), and no
  request left unanswered;
- p99 latency does not drift up: the median window p99 of the last third is at most 1.5
  times that of the first third after warm-up (absolute latency is the machine's);
- event-loop lag does not drift up the same way;
- no prediction record lost: every request answered 200 has its record in the log.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np

from benchmarks.chaos.report import RESULTS
from benchmarks.chaos.run import measure_capacity, say
from benchmarks.chaos.traffic import PATH, request_pool
from benchmarks.chaos.world import World, WorldOptions, fds
from benchmarks.harness import WRK, WrkResult, markdown_table, parse_wrk, tree_memory
from benchmarks.load import percentile

__all__ = ["SoakOptions", "Window", "run_soak", "verdicts"]

_JSON = {"content-type": "application/json"}
CONTROL_RATE = 1.0  # control calls per second: source rows and feedback in turn


@dataclass(frozen=True)
class SoakOptions:
    seconds: float = 1800.0
    share: float = 0.5  # of the measured capacity
    sample: float = 10.0  # seconds per window
    warmup: float = 0.2  # share of the run before the criteria apply
    rollout: float | None = 0.25  # when the rollout starts, as a share of the run (None: no rollout)
    cards: int = 1000


@dataclass
class Window:
    """One sampling window: when it ended (s since the start), the server's RSS (MiB) and
    open fds then, the loop lag (ms), and the window's requests, errors and p99 (ms)."""

    t: float
    rss_mib: float
    fds: int
    sockets: int  # of the fds
    lag_ms: float
    requests: int
    answered: int
    errors_5xx: int
    shed: int  # of the 5xx: load shedding's 503 (over capacity, Retry-After)
    no_answer: int
    other_4xx: int
    p99_ms: float


class _Control:
    """The control calls, one a second on a thread of their own: in turn five transactions
    written (each card's cached features invalidated everywhere), and labels for twenty
    requests answered lately."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.auth = {"authorization": f"Bearer {token}"}
        self.recent: list[str] = []
        self.calls: list[tuple[int, float]] = []  # (status, latency ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10, headers=self.auth) as client:
            i = 0
            while not self._stop.wait(1.0 / CONTROL_RATE):
                path, body = self._call(i)
                start = time.perf_counter()
                try:
                    status = client.post(path, json=body).status_code
                except httpx.HTTPError:
                    status = 0
                self.calls.append((status, (time.perf_counter() - start) * 1000))
                i += 1

    def _call(self, i: int) -> tuple[str, dict[str, Any]]:
        if i % 2 == 0:
            now = time.time()
            rows = [
                {"card_id": 1000 + (i * 7919 + k) % 1000, "ts": now, "amount": round(20 + (i + k) % 97, 2), "merchant_category": "groceries", "is_fraud": 0}
                for k in range(5)
            ]
            return "/v1/sources/transactions/rows", {"rows": rows}
        items = [{"request_id": rid, "label": 0} for rid in self.recent[-20:]] or [{"request_id": "none-yet", "label": 0}]
        return "/v1/feedback", {"items": items}


@dataclass
class _Traffic:
    """The data plane's traffic, 70 % /v1 predict and 30 % /v2 infer, driven by wrk (a
    Python client cannot send a few hundred requests a second beside the server on two
    cores) with paced connections, one wrk run per sampling window. Each answer's status
    and request id go to a file (wrk's Lua ``response``), so every answered request is
    checked in the prediction log afterwards."""

    url: str
    pool: Sequence[bytes]
    v2: Sequence[bytes]
    rate: float
    workdir: Path
    delay_ms: float = 200.0

    def script(self) -> Path:
        connections = self.connections
        delay = connections / self.rate * 1000
        v1 = ",\n".join(f"[[{b.decode()}]]" for b in self.pool[:300])
        v2 = ",\n".join(f"[[{b.decode()}]]" for b in self.v2)
        path = self.workdir / "soak.lua"
        path.write_text(
            f"local v1 = {{\n{v1}\n}}\nlocal v2 = {{\n{v2}\n}}\n"
            "local i = 0\nlocal out = nil\nlocal n = 0\n"
            'local headers = {["Content-Type"] = "application/json"}\n'
            "init = function(args) out = io.open(args[1], \"a\") end\n"
            "request = function()\n  i = i + 1\n"
            f'  if i % 10 < 7 then return wrk.format("POST", "{PATH}", headers, v1[(i % #v1) + 1]) end\n'
            '  return wrk.format("POST", "/v2/models/fraud/versions/1/infer", headers, v2[(i % #v2) + 1])\nend\n'
            "response = function(status, hdrs, body)\n"
            "  local kind = tostring(status)\n"
            '  if status == 503 and string.find(body, "over capacity", 1, true) then kind = "shed" end\n'
            '  out:write(kind, " ", hdrs["x-request-id"] or "-", "\\n")\n'
            "  n = n + 1\n  if n % 50 == 0 then out:flush() end\nend\n"
            f"delay = function() return {delay:.1f} end\n"
            "done = function() end\n"
        )
        return path

    @property
    def connections(self) -> int:
        return max(4, min(1000, round(self.rate * self.delay_ms / 1000)))

    def window(self, script: Path, seconds: float, index: int) -> tuple[WrkResult, list[tuple[str, str]]]:
        """One wrk run of ``seconds``: its report and each answer's (status, request id)."""
        answers = self.workdir / f"soak-{index}.txt"
        seconds = max(1, round(seconds))  # wrk takes whole seconds
        argv = [WRK, "-t1", f"-c{self.connections}", f"-d{seconds}s", "--timeout", "10s", "--latency", "-s", str(script), self.url + PATH, str(answers)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
        result = parse_wrk(done.stdout)
        lines = answers.read_text().split("\n") if answers.exists() else []
        answers.unlink(missing_ok=True)
        pairs = [(kind, rid) for kind, _, rid in (line.partition(" ") for line in lines if line)]
        return result, pairs


def _v2_bodies(url: str, pool: Sequence[bytes], n: int = 50) -> list[bytes]:
    """``/v2`` infer bodies for the deployment's model, from the features ``/v1`` serves."""
    with httpx.Client(base_url=url, timeout=30) as client:
        inputs = client.get("/v2/models/fraud/versions/1").json()["inputs"]
        bodies = []
        for raw in pool[:n]:
            request = msgspec.json.decode(raw)
            request["return_features"] = True
            answer = client.post(PATH, json=request).json()
            features = answer["features"][0]  # in the model's feature order
            if len(inputs) == 1:  # one matrix: a row of every feature
                spec = inputs[0]
                tensors = [{"name": spec["name"], "shape": [1, len(features)], "datatype": spec["datatype"], "data": list(features.values())}]
            else:  # one column per feature
                tensors = [{"name": s["name"], "shape": [1], "datatype": s["datatype"], "data": [features[s["name"]]]} for s in inputs]
            bodies.append(msgspec.json.encode({"inputs": tensors}))
    return bodies


def _lag_ms(client: httpx.Client) -> float:
    """The slowest of five ``GET /v2/health/live`` (no work but the loop's)."""
    worst = 0.0
    for _ in range(5):
        start = time.perf_counter()
        try:
            client.get("/v2/health/live")
        except httpx.HTTPError:
            return float("nan")
        worst = max(worst, (time.perf_counter() - start) * 1000)
        time.sleep(0.05)
    return worst


def _start_rollout(world: World, url: str, canary: tuple[Any, Any]) -> dict[str, Any]:
    """Register ``canary`` (a retrained model, its training set) as fraud:2 and start
    rolling it out."""
    import stalwart
    from benchmarks.chaos.world import TRUSTED

    model, training = canary
    registry = stalwart.Registry.open(world.settings())
    try:
        registry.register("fraud", model, training_set=training, trusted_types=TRUSTED, description="retrained: the soak's canary")
    finally:
        registry.db.dispose()
    plan = {"steps": [0.1, 0.5], "min_seconds": "1m", "min_requests": 200, "look_seconds": 5}
    response = httpx.post(
        url + "/v1/deployments/fraud/rollout", json={"canary": "fraud:2", "plan": plan, "reason": "soak"},
        headers={"authorization": f"Bearer {world.token}"}, timeout=30,
    )
    return {"status": response.status_code, "body": response.json()}


def run_soak(world: World, options: SoakOptions) -> dict[str, Any]:
    """The soak against the world's server (started here if it is not); its document."""
    server = world.server or world.start_server()
    pool = request_pool(world.frame, cards=options.cards)
    capacity = measure_capacity(server.url, pool, world.root)
    rate = max(1.0, options.share * capacity)
    say(f"soak: capacity {capacity:,.0f} answers/s; {rate:,.0f} requests/s for {options.seconds:g} s")
    traffic = _Traffic(server.url, pool, _v2_bodies(server.url, pool), rate, world.root)
    script = traffic.script()
    control = _Control(server.url, world.token)
    # Trained now, not when the rollout starts: training in this process would slow the run.
    canary = world.retrain(seed=8) if options.rollout is not None else None
    windows: list[Window] = []
    rollout: dict[str, Any] | None = None
    ids: list[str] = []
    start = time.monotonic()
    control.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while (left := start + options.seconds - time.monotonic()) > 1.0:
                if canary is not None and rollout is None and time.monotonic() - start >= options.seconds * (options.rollout or 0):
                    rollout = _start_rollout(world, server.url, canary)
                result, answers = traffic.window(script, min(options.sample, left), len(windows))
                answered = [rid for kind, rid in answers if kind == "200"]
                ids += answered
                control.recent = answered[-50:] or control.recent
                memory = tree_memory(server.process.pid)
                open_fds, sockets = fds(server.process.pid)
                kinds = [kind for kind, _ in answers]
                windows.append(Window(
                    t=round(time.monotonic() - start, 1),
                    rss_mib=memory.rss / 2**20,
                    fds=open_fds,
                    sockets=sockets,
                    lag_ms=_lag_ms(client),
                    requests=result.requests,
                    answered=len(answered),
                    errors_5xx=sum(1 for k in kinds if k == "shed" or k.startswith("5")),
                    shed=kinds.count("shed"),
                    no_answer=result.errors - result.non2xx,
                    other_4xx=sum(1 for k in kinds if k.startswith("4")),
                    p99_ms=result.p99_ms,
                ))
                w = windows[-1]
                say(f"  t={w.t:6.0f}s rss {w.rss_mib:7.1f} MiB fds {w.fds:4d} ({w.sockets} sockets) lag {w.lag_ms:6.1f} ms p99 {w.p99_ms:7.1f} ms "
                    f"requests {w.requests:6d} 5xx {w.errors_5xx} (shed {w.shed}) 4xx {w.other_4xx} unanswered {w.no_answer}")
            final_rollout = client.get("/v1/deployments/fraud/rollout", headers={"authorization": f"Bearer {world.token}"}).json() if rollout else None
    finally:
        control.stop()
    calls = list(control.calls)
    lost = len(set(ids) - world.stored(ids, timeout=60))
    document = {
        "started": dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
        "options": asdict(options),
        "capacity": capacity,
        "rate": rate,
        "windows": [asdict(w) for w in windows],
        "records_checked": len(ids),
        "records_lost": lost,
        "control": {
            "calls": len(calls),
            "failed": {str(st): sum(1 for c, _ in calls if c == st) for st in sorted({c for c, _ in calls if c not in (200, 201)})},
            "p99_ms": percentile([lat for _, lat in calls], 99),
        },
        "rollout": {"start": rollout, "end": _rollout_state(final_rollout)},
    }
    document["verdicts"] = verdicts(windows, lost, options.warmup)
    failed = sum(document["control"]["failed"].values())
    document["verdicts"].append({"criterion": "control calls failed (source rows, feedback)", "value": failed, "bound": "0", "passed": failed == 0 and bool(calls)})
    return document


def _rollout_state(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    rollout = body.get("rollout", body)
    return {k: rollout.get(k) for k in ("state", "canary", "weight", "step", "decision") if isinstance(rollout, dict) and k in rollout}


def _slope_growth(ts: Sequence[float], values: Sequence[float]) -> float:
    """Growth from the first to the last time along the least-squares line, as a share of
    the line's value at the first time."""
    if len(ts) < 2:
        return 0.0
    slope, intercept = np.polyfit(np.asarray(ts), np.asarray(values), 1)
    first = slope * ts[0] + intercept
    return float(slope * (ts[-1] - ts[0]) / first) if first else 0.0


def verdicts(windows: Sequence[Window], lost: int, warmup: float = 0.2) -> list[dict[str, Any]]:
    """Each pass criterion (see the module docstring): its name, the measured value, the
    bound, and whether it held."""
    if not windows:
        return [{"criterion": "windows", "value": 0, "bound": ">= 1", "passed": False}]
    end = windows[-1].t
    after = [w for w in windows if w.t > end * warmup] or list(windows)
    third = max(1, len(after) // 3)
    first, last = after[:third], after[-third:]
    growth = _slope_growth([w.t for w in after], [w.rss_mib for w in after])
    # Sockets follow the client's connections (at most its senders'); other descriptors
    # (files, pipes, the spool's segments) are what a leak would grow.
    fd_growth = max(w.fds - w.sockets for w in after) - (after[0].fds - after[0].sockets)
    errors = sum(w.errors_5xx - w.shed for w in windows)
    shed = sum(w.shed for w in windows)
    requests = max(1, sum(w.requests for w in windows))
    unanswered = sum(w.no_answer for w in windows)
    p99_ratio = _median([w.p99_ms for w in last]) / max(_median([w.p99_ms for w in first]), 1e-9)
    lag_ratio = (_median([w.lag_ms for w in last]) + 1.0) / (_median([w.lag_ms for w in first]) + 1.0)
    return [
        {"criterion": "RSS growth after warm-up", "value": f"{growth:+.1%}", "bound": "< +5 %", "passed": growth < 0.05},
        {"criterion": "open fds (not sockets) growth after warm-up", "value": fd_growth, "bound": "<= 10", "passed": fd_growth <= 10},
        {"criterion": "5xx answers other than load shedding", "value": errors, "bound": "0", "passed": errors == 0},
        {"criterion": "requests shed (503, Retry-After)", "value": f"{shed / requests:.2%}", "bound": "<= 1 %", "passed": shed <= 0.01 * requests},
        {"criterion": "requests unanswered", "value": unanswered, "bound": "0", "passed": unanswered == 0},
        {"criterion": "p99 drift (last third / first third)", "value": f"{p99_ratio:.2f}", "bound": "<= 1.5", "passed": p99_ratio <= 1.5},
        {"criterion": "loop lag drift (last third / first third, +1 ms)", "value": f"{lag_ratio:.2f}", "bound": "<= 1.5", "passed": lag_ratio <= 1.5},
        {"criterion": "prediction records lost", "value": lost, "bound": "0", "passed": lost == 0},
    ]


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def write(document: dict[str, Any]) -> list[str]:
    """The soak's document as JSON and Markdown in benchmarks/results; the paths."""
    import json

    from benchmarks.chaos.report import soak_html

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%d-%H%M%S")
    base = RESULTS / f"soak-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    base.with_suffix(".md").write_text(markdown(document))
    base.with_suffix(".html").write_text(soak_html(document))
    return [str(base.with_suffix(s)) for s in (".json", ".md", ".html")]


def markdown(document: dict[str, Any]) -> str:
    windows = document["windows"]
    step = max(1, len(windows) // 30)
    rows = [[f"{w['t']:.0f}", f"{w['rss_mib']:.1f}", str(w["fds"]), f"{w['lag_ms']:.1f}", f"{w['p99_ms']:.1f}", str(w["requests"]), f"{w['errors_5xx']} ({w['shed']})", str(w["no_answer"])] for w in windows[::step]]
    verdict_rows = [[v["criterion"], str(v["value"]), v["bound"], "pass" if v["passed"] else "FAIL"] for v in document["verdicts"]]
    return "\n\n".join([
        f"# Soak, {document['started']}",
        f"{document['options']['seconds']:g} s at {document['rate']:,.0f} requests/s ({document['options']['share']:.0%} of "
        f"{document['capacity']:,.0f} answers/s measured); {document['records_checked']:,} answered requests checked in the log; "
        f"control calls: {document['control']}; rollout: {document['rollout']}",
        markdown_table(["criterion", "value", "bound", "verdict"], verdict_rows),
        markdown_table(["t s", "RSS MiB", "fds", "loop lag ms", "p99 ms", "requests", "5xx (shed)", "unanswered"], rows),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument("--share", type=float, default=0.5, help="share of the measured capacity offered (default 0.5)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds per sampling window (default 10)")
    parser.add_argument("--no-rollout", action="store_true", help="do not start a rollout a quarter of the way in")
    args = parser.parse_args(argv)
    options = SoakOptions(seconds=args.minutes * 60, share=args.share, sample=args.sample, rollout=None if args.no_rollout else 0.25)
    # A spool of a size a real disk gives it: the chaos run's 64 MiB (made to be filled)
    # would fill in minutes whenever delivery lags, and then measure the disk, not leaks.
    with World(WorldOptions(cards=options.cards, spool_size="2g")) as world:
        document = run_soak(world, options)
    paths = write(document)
    print(markdown(document))
    print("written: " + ", ".join(paths))
    failed = [v["criterion"] for v in document["verdicts"] if not v["passed"]]
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    # SIGTERM ends the run like Ctrl-C: the world's servers stopped, its tmpfs unmounted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())
