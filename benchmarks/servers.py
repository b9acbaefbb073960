"""``stalwart serve`` subprocesses on free loopback ports, for end-to-end benchmarks.

Each server is configured only by ``STALWART_*`` variables (the benchmark's own are not
inherited), runs this checkout's code (``src`` first on ``PYTHONPATH``, and the checkout
itself so ``benchmarks.models`` imports), and is stopped, by its process id, on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "Server", "free_port", "serve"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A running ``stalwart serve``: its URL and process."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def serve(env: Mapping[str, str], log: Path, *, ready_timeout: float = 60.0) -> Iterator[Server]:
    """Start a server with these ``STALWART_*`` settings, wait until it is ready, stop it
    when the block exits."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    full = {
        **inherited,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "STALWART_HOST": "127.0.0.1",
        "STALWART_PORT": str(port),
        "STALWART_LOG_LEVEL": "warning",
        "STALWART_LOG_FORMAT": "json",
        "STALWART_ACCESS_LOG": "false",
        **env,
    }
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "stalwart", "serve"], env=full, stdout=out, stderr=subprocess.STDOUT)
    server = Server(url, process, log)
    try:
        deadline = time.monotonic() + ready_timeout
        with httpx.Client(base_url=url, timeout=5) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"stalwart serve exited:\n{server.tail()}")
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stalwart serve was not ready in {ready_timeout} s:\n{server.tail()}")
                time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
