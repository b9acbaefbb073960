"""The server under the app, as ``STALWART_SERVER`` chooses it, started and stopped: an
unknown server or a missing extra is an error naming what to fix; a taken port or a failed
lifespan is a process that exits 3, not one that hangs. Stopped by SIGTERM, a request in
flight is answered, no new one is taken, and the process exits with the signal, as a
supervisor expects; a request that outlasts STALWART_GRACEFUL_SHUTDOWN_SECONDS is cut off
then, never holding the process up for the model's sake. With STALWART_DRAIN_SECONDS,
readiness turns false first and requests are still served (each closing its connection)
until the drain is over. Each on both servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.serving.server import build_server
from stalwart.storage.tables import predictions
from tests.models import Picky
from tests.processes import SRC, ServeProcess
from tests.servers import free_port

SERVERS = ["uvicorn", "granian"]
# Given, not inferred: inferring it from a sample would call the slow model.
SIGNATURE = {
    "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}],
    "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
}
BODY = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}


def _stalwart_serve(home: Path, *prelude: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``stalwart serve`` run to its end (at most 60 s), after ``prelude`` (Python
    statements) in the same interpreter."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    code = ";".join([*prelude, "from stalwart.cli.main import main", "sys.argv = ['stalwart', 'serve']", "main()"])
    return subprocess.run(
        [sys.executable, "-c", f"import sys;{code}"],
        env={**clean, "PYTHONPATH": f"{SRC}{os.pathsep}{SRC.parent}", "STALWART_HOME": str(home), "STALWART_LOG_FORMAT": "json", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_an_unknown_server_is_refused_naming_the_setting(home: Path) -> None:
    done = _stalwart_serve(home, STALWART_SERVER="gunicorn")
    assert done.returncode == 1
    assert "error: invalid settings: STALWART_SERVER: Input should be 'uvicorn' or 'granian'" in done.stderr
    assert "Traceback" not in done.stderr


def test_granian_not_installed_names_the_extra(home: Path) -> None:
    """As for a user who did not install the extra: granian cannot be imported."""
    done = _stalwart_serve(home, "sys.modules['granian'] = None", STALWART_SERVER="granian", STALWART_PORT=str(free_port()))
    assert done.returncode == 1
    assert "STALWART_SERVER=granian needs the 'granian' package" in done.stderr
    assert "pip install 'stalwart[granian]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("server", SERVERS)
def test_a_taken_port_exits_3(home: Path, server: str) -> None:
    """Another process listens on the port: exit 3 (as uvicorn.run), the port named, no
    traceback (nor granian's Rust backtrace, RUST_BACKTRACE set or not)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = _stalwart_serve(home, STALWART_SERVER=server, STALWART_HOST="127.0.0.1", STALWART_PORT=str(port), RUST_BACKTRACE="1")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "address already in use" in (done.stdout + done.stderr).lower()
    assert "Traceback" not in done.stderr
    assert "ceval.c" not in done.stderr  # a frame of the Rust backtrace


@pytest.mark.parametrize("server", SERVERS)
def test_a_failed_lifespan_is_a_server_that_did_not_start(home: Path, server: str) -> None:
    """The app's lifespan startup raises: ``run`` returns (no hang), ``started`` is False."""

    @asynccontextmanager
    async def failing(_app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("the lifespan failed on purpose")
        yield

    settings = Settings(home=home, server=server)  # type: ignore[arg-type]
    handle = build_server(Starlette(lifespan=failing), settings, host="127.0.0.1", port=free_port())
    thread = threading.Thread(target=handle.run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the server hung after its lifespan failed"
    assert handle.started is False


def _serve(home: Path, server: str, graceful: float, drain: float = 0.0) -> ServeProcess:
    process = ServeProcess(
        {
            "STALWART_HOME": str(home),
            "STALWART_SERVER": server,
            "STALWART_PYTHON_MODULES": "tests",
            "STALWART_BATCHING": "false",
            "STALWART_MODEL_TIMEOUT_SECONDS": "60",
            "STALWART_GRACEFUL_SHUTDOWN_SECONDS": str(graceful),
            "STALWART_DRAIN_SECONDS": str(drain),
        },
        home.parent / f"serve-{server}.log",
    )
    process.start()
    process.wait_ready()
    return process


class _InFlight:
    """One inference request on a thread of its own: its response, or the error it met."""

    def __init__(self, url: str) -> None:
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        try:
            self.response = httpx.post(f"{url}/v2/models/slow/infer", json=BODY, headers={"x-request-id": "in-flight"}, timeout=30)
        except httpx.HTTPError as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join(timeout=30)


def _refused(port: int) -> bool:
    """No new request is served: the port refuses connections, or one is made and gets
    no answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\n\r\n")
            sock.settimeout(1)
            return not sock.recv(65536).startswith(b"HTTP/1.1 200")
    except OSError:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_answers_the_request_in_flight_then_exits_with_the_signal(home: Path, registry: Registry, server: str) -> None:
    """SIGTERM while a 1.5 s model call runs: no new request is served, the one in flight
    gets its 200, and the process exits by SIGTERM with nothing logged as a crash."""
    registry.register("slow", Picky(delay=1.5), signature=SIGNATURE)
    process = _serve(home, server, graceful=10)
    assert process.process is not None
    try:
        call = _InFlight(process.url)
        time.sleep(0.5)
        process.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert _refused(process.port)
        call.join()
        assert call.response is not None, call.error
        assert call.response.status_code == 200, call.response.text
        assert call.response.json()["outputs"][0]["data"] == [6.0]
        assert process.process.wait(timeout=15) == -signal.SIGTERM
    finally:
        process.stop()
    assert "Traceback" not in process.log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_a_request_outlasting_the_graceful_shutdown_is_cut_off(home: Path, registry: Registry, server: str) -> None:
    """SIGTERM while a 20 s model call runs, with 1 s of graceful shutdown: the process is
    gone within a few seconds, the client gets no answer of the model's."""
    registry.register("slow", Picky(delay=20), signature=SIGNATURE)
    process = _serve(home, server, graceful=1)
    assert process.process is not None
    try:
        call = _InFlight(process.url)
        time.sleep(0.5)
        start = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=15) == -signal.SIGTERM
        assert time.monotonic() - start < 6
        call.join()
        assert call.response is None or call.response.status_code >= 500, call.response.text
    finally:
        process.stop()


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_drains_readiness_false_first_then_stops_and_flushes(home: Path, registry: Registry, server: str) -> None:
    """STALWART_DRAIN_SECONDS=3, SIGTERM while a 5 s model call runs: at once readiness
    answers 503 (draining) while liveness and new requests are still answered, each with
    ``connection: close`` (so a proxy's next request opens a connection elsewhere); once the
    drain is over no new request is served; the call in flight, still running then, gets
    its 200; the process exits by SIGTERM soon after it, every answered request in the
    prediction log."""
    registry.register("slow", Picky(delay=5.0), signature=SIGNATURE)  # outlasts the drain
    registry.register("fast", Picky(), signature=SIGNATURE)
    drain = 3.0
    process = _serve(home, server, graceful=10, drain=drain)
    assert process.process is not None
    answered: list[str] = []
    try:
        with httpx.Client(base_url=process.url, timeout=10) as client:
            assert client.get("/v2/health/ready").status_code == 200
            call = _InFlight(process.url)
            time.sleep(0.5)
            signalled = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            ready = client.get("/v2/health/ready")
            assert ready.status_code == 503, ready.text
            assert ready.json() == {"ready": False, "error": "draining: the server is shutting down"}
            assert ready.headers["connection"] == "close"
            assert client.get("/v2/health/live").status_code == 200
            for i in range(3):  # still served during the drain, each on a connection of its own
                response = client.post("/v2/models/fast/infer", json=BODY, headers={"x-request-id": f"drain-{i}"})
                assert response.status_code == 200, response.text
                assert response.headers["connection"] == "close"
                answered.append(response.headers["x-request-id"])
            assert time.monotonic() - signalled < drain, "the checks above took longer than the drain"
        deadline = signalled + drain + 0.5
        while not _refused(process.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _refused(process.port), "still serving new requests after the drain"
        call.join()
        assert call.response is not None, call.error
        assert call.response.status_code == 200, call.response.text
        answered.append("in-flight")
        assert process.process.wait(timeout=15) == -signal.SIGTERM
        assert time.monotonic() - signalled < 5.0 + 3.0  # the call's rest (past the drain), slack for the flush
    finally:
        process.stop()
    with registry.db.read() as conn:
        logged = set(conn.execute(select(predictions.c.request_id)).scalars())
    assert set(answered) <= logged
    assert "Traceback" not in process.log.read_text()
