"""Issue 20: the Open Inference Protocol's three encodings side by side, JSON over REST,
binary tensor data over REST and gRPC, through one ``stalwart serve`` (REST and gRPC on
their own ports, one process, one event loop), serving the demo's ``breast-cancer`` v1
(the logistic regression pipeline: cheap, so the protocol's cost shows) with batching on.

Requests of 1 row x 30 FP64 and 1,000 rows x 30 (240 KB of tensor data), ``predict_proba``
answered in the request's own encoding (JSON data, a binary output, raw_output_contents).
At c=1 and c=64, per contestant: requests/s, p50 and p99, and the server's CPU per request
(every thread of the process, across each run: the figure that does not depend on the
client, nor on how busy the shared machine is). Contestants are interleaved within each
repeat; medians of the repeats.

Two clients: wrk for REST (C, what the other suites use), and a Python closed loop
(``benchmarks/oip_load.py``: aiohttp for REST, ``grpc.aio`` for gRPC, ghz not being
installed) for all three, so gRPC is compared with REST by the same kind of client. The
client shares the 2 cores with the server; a Python client costs more per request than
wrk, so its req/s say less about the server than its CPU per request does.

Last, in process, the decode stage alone (body to checked numpy arrays, what the data
plane times as ``decode_ms``): microseconds per request and milliseconds per MB of tensor
data, for each encoding, at 1, 1,000 and 10,000 rows.

    PYTHONPATH=src python -m benchmarks oip --seconds 3 --repeats 3
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.contest import Arena
from benchmarks.harness import (
    Server,
    bench_env,
    environment_notes,
    fmt_ms,
    fmt_rps,
    free_port,
    markdown_table,
    tree_cpu,
    wrk,
)
from benchmarks.models import DEMO_MODELS, infer_path

CONCURRENCIES = (1, 64)
ROWS = (1, 1000)
DECODE_ROWS = (1, 1000, 10_000)
OUTPUT = "predict_proba"


@dataclass(frozen=True)
class Options:
    seconds: float = 3.0
    repeats: int = 3


@dataclass(frozen=True)
class Payload:
    """One request in every encoding: the bodies and the binary JSON header's length."""

    json: bytes
    binary: bytes
    header_length: int
    grpc: bytes


@dataclass
class Runs:
    """A contestant's repeated runs at one point; reported as medians."""

    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, rps: float, p50: float, p99: float, cpu_us: float, errors: int) -> None:
        self.rps.append(rps)
        self.p50.append(p50)
        self.p99.append(p99)
        self.cpu_us.append(cpu_us)
        self.errors += errors

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


# (name, client, encoding)
CONTESTANTS = (
    ("REST JSON", "wrk", "json"),
    ("REST binary", "wrk", "binary"),
    ("REST JSON", "python", "json"),
    ("REST binary", "python", "binary"),
    ("gRPC raw", "python", "grpc"),
)


def payload(rows: np.ndarray[Any, Any]) -> Payload:
    """``rows`` as an OIP request asking for ``predict_proba``, in the three encodings."""
    from stalwart.serving.grpc import messages as m

    x = np.ascontiguousarray(rows, dtype="<f8")
    shape = list(x.shape)
    as_json = json.dumps({
        "inputs": [{"name": "input-0", "shape": shape, "datatype": "FP64", "data": x.ravel().tolist()}],
        "outputs": [{"name": OUTPUT}],
    }).encode()
    head = json.dumps({
        "inputs": [{"name": "input-0", "shape": shape, "datatype": "FP64", "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
    }).encode()
    request = m.ModelInferRequest(model_name="breast-cancer", model_version="1")
    request.inputs.add(name="input-0", datatype="FP64", shape=shape)
    request.outputs.add(name=OUTPUT)
    request.raw_input_contents.append(x.tobytes())
    return Payload(as_json, head + x.tobytes(), len(head), request.SerializeToString())


def _wrk_script(workdir: Path, name: str, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk script that POSTs ``body`` (read from a file: binary bodies are not text)."""
    data = workdir / f"{name}.body"
    data.write_bytes(body)
    script = workdir / f"{name}.lua"
    lines = ['wrk.method = "POST"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines += [f'local f = assert(io.open("{data}", "rb"))', 'wrk.body = f:read("*all")', "f:close()"]
    script.write_text("\n".join(lines) + "\n")
    return script


def _python_load(transport: str, target: str, body: Path, header_length: int | None, concurrency: int, seconds: float) -> dict[str, float]:
    argv = [
        sys.executable, "-m", "benchmarks.oip_load", transport, target, str(body),
        "--concurrency", str(concurrency), "--seconds", f"{seconds:g}",
    ]
    if header_length is not None:
        argv += ["--header-length", str(header_length)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False, env=bench_env())
    if done.returncode != 0:
        raise RuntimeError(f"oip_load failed: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _measure(
    server: Server, grpc_target: str, workdir: Path, rows: int, body: Payload, client: str, encoding: str, concurrency: int, seconds: float
) -> tuple[float, float, float, float, int]:
    """One run: (answered req/s, p50 ms, p99 ms, server CPU us per answered request, refused).
    Refused requests (shed with 503 when the server is over capacity, or timed out) are
    counted apart; their cost is charged to the answered ones."""
    url = server.url + infer_path(1)
    name = f"{encoding}-{rows}"
    cpu_before = tree_cpu(server.process.pid)
    if client == "wrk":
        headers = {"Content-Type": "application/json"}
        if encoding == "binary":
            headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(body.header_length)}
        script = _wrk_script(workdir, name, body.binary if encoding == "binary" else body.json, headers)
        result = wrk(url, script, connections=concurrency, seconds=seconds)
        cpu = tree_cpu(server.process.pid) - cpu_before
        refused = result.errors + result.non2xx
        answered = max(result.requests - result.non2xx, 1)
        rps = result.requests_per_s * answered / max(result.requests, 1)
        return rps, result.p50_ms, result.p99_ms, cpu / answered * 1e6, refused
    data = workdir / f"{name}.{encoding}"
    data.write_bytes({"json": body.json, "binary": body.binary, "grpc": body.grpc}[encoding])
    if encoding == "grpc":
        out = _python_load("grpc", grpc_target, data, None, concurrency, seconds)
    else:
        out = _python_load("rest", url, data, body.header_length if encoding == "binary" else None, concurrency, seconds)
    cpu = tree_cpu(server.process.pid) - cpu_before
    answered = max(out["answered"], 1)
    return out["rps"], out["p50_ms"], out["p99_ms"], cpu / answered * 1e6, int(out["errors"])


def _decode_costs(x_test: np.ndarray[Any, Any]) -> list[list[str]]:
    """Body to checked arrays, in process, per encoding and size."""
    from stalwart.registry.signature import Signature, TensorSpec
    from stalwart.serving.binary import decode_binary_request, decode_json_request
    from stalwart.serving.codec import check_request
    from stalwart.serving.grpc.tensors import grpc_request, parse_infer_request

    signature = Signature([TensorSpec("input-0", "FP64", [-1, 30])], [TensorSpec(OUTPUT, "FP64", [-1, 2])])
    table: list[list[str]] = []
    for rows in DECODE_ROWS:
        x = np.resize(x_test, (rows, x_test.shape[1]))
        body = payload(x)
        megabytes = x.nbytes / 1e6
        decoders: dict[str, Callable[[], Any]] = {
            "JSON": lambda body=body: check_request(decode_json_request(body.json), signature),
            "binary": lambda body=body: check_request(decode_binary_request(body.binary, body.header_length), signature),
            "gRPC raw": lambda body=body: check_request(grpc_request(parse_infer_request(body.grpc)), signature),
        }
        costs = {name: _time_per_call(decode) for name, decode in decoders.items()}
        for name, seconds in costs.items():
            table.append([
                f"{rows:,}", name, f"{len(getattr(body, {'JSON': 'json', 'binary': 'binary', 'gRPC raw': 'grpc'}[name])):,}",
                f"{seconds * 1e6:,.1f}", f"{seconds * 1e3 / megabytes:,.2f}", f"{costs['JSON'] / seconds:.1f}x",
            ])
    return table


def _time_per_call(call: Callable[[], Any], budget: float = 0.4) -> float:
    """Median seconds per call over five batches filling about ``budget`` seconds."""
    call()
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < budget / 5 or count < 3:
        call()
        count += 1
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(count):
            call()
        samples.append((time.perf_counter() - t0) / count)
    return statistics.median(samples)


# The servers: the protocol alone (the request taps off), and the defaults, whose prediction
# log and live profiles record every request's inputs (at c=1 only: what monitoring adds).
SERVERS = {
    # A 1,000-row request is one model call here; with the default batch size (64 rows) it
    # would be sixteen, the same for every encoding, which would hide the protocol's cost.
    "protocol": {"STALWART_PREDICTION_LOG": "off", "STALWART_LIVE_PROFILES": "off", "STALWART_MAX_BATCH_SIZE": "1024"},
    "defaults": {},
}
SERVER_CONCURRENCIES = {"protocol": CONCURRENCIES, "defaults": (1,)}


def run(options: Options) -> str:
    """Run the suite; returns the markdown report."""
    lines = ["# The Open Inference Protocol's encodings: JSON, binary REST and gRPC (issue 20)", ""]
    logistic = next(m for m in DEMO_MODELS if m.key == "logistic")
    with Arena(models=[logistic]) as arena:
        servers: dict[str, tuple[Server, str]] = {}
        for key, env in SERVERS.items():
            grpc_port = free_port()
            server = arena.add_stalwart(key, {"STALWART_GRPC_PORT": str(grpc_port), "STALWART_ACCESS_LOG": "false", **env})
            servers[key] = (server, f"127.0.0.1:{grpc_port}")
        payloads = {rows: payload(np.resize(arena.x_test, (rows, arena.x_test.shape[1]))) for rows in ROWS}
        points = [
            (key, rows, concurrency, contestant)
            for rows in ROWS
            for key in SERVERS
            for concurrency in SERVER_CONCURRENCIES[key]
            for contestant in CONTESTANTS
        ]
        results: dict[tuple[str, int, int, str, str], Runs] = {}
        with arena.start():
            total = options.repeats * len(points)
            done = 0
            for _ in range(options.repeats):
                for key, rows, concurrency, (name, client, encoding) in points:
                    server, grpc_target = servers[key]
                    measured = _measure(server, grpc_target, arena.workdir, rows, payloads[rows], client, encoding, concurrency, options.seconds)
                    results.setdefault((key, rows, concurrency, name, client), Runs()).add(*measured)
                    done += 1
                    print(
                        f"  [{done}/{total}] {key:<8} {rows:>5} rows c={concurrency:<3} {name:<12} {client:<6} "
                        f"{measured[0]:>8,.0f} req/s p50 {measured[1]:7.2f} ms p99 {measured[2]:7.2f} ms "
                        f"cpu {measured[3]:8,.0f} us/req" + (f" refused {measured[4]}" if measured[4] else ""),
                        file=sys.stderr, flush=True,
                    )
        lines += [
            environment_notes(options.seconds, options.repeats),
            "- here also a Python client (benchmarks/oip_load.py: aiohttp for REST, grpc.aio for gRPC; "
            "ghz is not installed), one process, closed loop, 0.5 s warm-up; bodies prepared bytes",
            f"- model: breast-cancer v1 ({logistic.label}), output {OUTPUT}, batching on, access log off",
            "- `protocol`: STALWART_PREDICTION_LOG=off, STALWART_LIVE_PROFILES=off and STALWART_MAX_BATCH_SIZE=1024 "
            "(a 1,000-row request one model call, not sixteen of 64 rows), so the figures are the protocol's and the "
            "pipeline's; `defaults`: the defaults (every request's inputs logged and profiled; big requests split in 64-row parts)",
            "- req/s counts answered requests; `refused`: shed (503: over capacity) or failed, whose cost is "
            "charged to the answered ones; server CPU counts every thread of the server process",
            "",
        ]
        for rows in ROWS:
            lines += [f"## {rows:,} row{'s' if rows > 1 else ''} x 30 FP64 per request", ""]
            table = []
            for key in SERVERS:
                for concurrency in SERVER_CONCURRENCIES[key]:
                    base = results[(key, rows, concurrency, "REST JSON", "python")]
                    for name, client, _ in CONTESTANTS:
                        r = results[(key, rows, concurrency, name, client)]
                        cpu = r.median(r.cpu_us)
                        table.append([
                            key, str(concurrency), name, client, fmt_rps(r.median(r.rps)), fmt_ms(r.median(r.p50)),
                            fmt_ms(r.median(r.p99)), f"{cpu:,.0f}", f"{base.median(base.cpu_us) / cpu:.2f}x", str(r.errors),
                        ])
            lines += [
                markdown_table(
                    ["server", "c", "encoding", "client", "req/s", "p50 ms", "p99 ms", "server CPU us/req", "CPU: JSON (python) / this", "refused"],
                    table,
                ),
                "",
            ]
        lines += [
            "## Decode stage alone (in process): body to checked numpy arrays",
            "",
            markdown_table(["rows", "encoding", "body bytes", "us per request", "ms per MB of tensor data", "JSON / this"], _decode_costs(arena.x_test)),
            "",
            f"(tensor data: rows x 30 x 8 bytes; MB = 10^6 bytes; the machine's load average at the end: {os.getloadavg()[0]:.2f})",
        ]
    return "\n".join(lines) + "\n"
