"""A real server (uvicorn, or granian with STALWART_SERVER=granian) on a free loopback port,
for tests that speak HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from stalwart.serving.server import build_server


@dataclass
class LiveServer:
    url: str
    app: Any
    client: httpx.Client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def start_server(settings: Settings, registry: Registry | None = None, app: Any = None, *, wait_ready: bool = True) -> Iterator[LiveServer]:
    """Run the app under ``settings.server`` in a thread until the block exits."""
    app = app if app is not None else create_app(settings, registry=registry)
    port = free_port()
    # The same server, protocol, timeouts and limits as `stalwart serve`.
    server = build_server(app, settings, host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = client.get("/v2/health/ready" if wait_ready else "/v2/health/live")
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"test server on {url} did not start")
            time.sleep(0.02)
        yield LiveServer(url, app, client)
    finally:
        client.close()
        server.stop()
        thread.join(timeout=15)
