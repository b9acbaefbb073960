"""A closed-loop load client in Python, for the transports wrk cannot speak (gRPC) and, for a
like-for-like comparison, the REST ones too: ``concurrency`` tasks on one event loop, each
sending its next request when the last is answered, for ``seconds``.

REST goes through aiohttp (one keep-alive connection per task), gRPC through ``grpc.aio``
(one channel: HTTP/2 streams multiplexed on one connection, as Triton's and KServe's clients
do). Bodies are prepared bytes, sent as they are and never parsed on the way back, so the
client's own cost is the transport's.

Run as a separate process by ``benchmarks/bench_oip.py``; prints one JSON object::

    python -m benchmarks.oip_load grpc 127.0.0.1:8081 /path/body.bin --concurrency 64 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"

Send = Callable[[], Awaitable[bool]]


async def _loop(send: Send, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < stop:
            start = time.perf_counter()
            ok = await send()
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "requests": len(latencies),
        "answered": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
    }


async def _rest(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float, warmup: float) -> dict[str, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def send() -> bool:
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        return await _measured(send, concurrency, seconds, warmup)


async def _grpc(target: str, body: bytes, concurrency: int, seconds: float, warmup: float) -> dict[str, float]:
    import grpc
    import grpc.aio

    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(GRPC_INFER)  # bytes in, bytes out: no protobuf work here

        async def send() -> bool:
            try:
                await infer(body, timeout=30)
            except grpc.aio.AioRpcError:
                return False
            return True

        return await _measured(send, concurrency, seconds, warmup)


async def _measured(send: Send, concurrency: int, seconds: float, warmup: float) -> dict[str, float]:
    """A warm-up run, then the measured one; ``sent`` and ``answered`` count both (the
    server's CPU is measured across the whole process)."""
    warm = await _loop(send, concurrency, warmup)
    result = await _loop(send, concurrency, seconds)
    result["sent"] = warm["requests"] + warm["errors"] + result["requests"] + result["errors"]
    result["answered"] = warm["requests"] + result["requests"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.oip_load", description=__doc__.splitlines()[0])
    parser.add_argument("transport", choices=["rest", "grpc"])
    parser.add_argument("target", help="REST: the infer URL; gRPC: host:port")
    parser.add_argument("body", type=Path, help="the request body (REST) or serialized ModelInferRequest (gRPC)")
    parser.add_argument("--header-length", type=int, default=None, help="REST binary: Inference-Header-Content-Length")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args(argv)
    body = args.body.read_bytes()
    if args.transport == "grpc":
        result = asyncio.run(_grpc(args.target, body, args.concurrency, args.seconds, args.warmup))
    else:
        headers = {"Content-Type": "application/json"}
        if args.header_length is not None:
            headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(args.header_length)}
        result = asyncio.run(_rest(args.target, body, headers, args.concurrency, args.seconds, args.warmup))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
