"""Slow, silent and numerous clients against a real ``stalwart serve`` process: sockets are
closed on the server's terms (header, body and keep-alive deadlines), and beyond the
connection limit new requests get 503 (uvicorn) or wait unaccepted (granian) instead of the
process running out of descriptors. Every test runs on both servers (STALWART_SERVER).
Loopback only, timeouts configured short."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from tests.processes import ServeProcess

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
KEEP_ALIVE = 1
MAX_CONNECTIONS = 40
SLACK = 1.5  # seconds beyond a deadline within which the socket must be gone
SERVERS = ["uvicorn", "granian"]  # STALWART_SERVER: every test runs on both


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp(f"connections-{request.param}")
    process = ServeProcess(
        {
            "STALWART_SERVER": request.param,
            "STALWART_HOME": str(root / "home"),
            "STALWART_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "STALWART_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
            "STALWART_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
            "STALWART_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        },
        root / "serve.log",
    )
    process.start()
    try:
        process.wait_ready()
        process.client.close()  # its keep-alive connection would count against the limit
        yield process
    finally:
        process.stop()


def _connect(server: ServeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Read until the server closes; (seconds it took, what it sent). Fails past ``seconds``."""
    start = time.monotonic()
    received = b""
    sock.settimeout(0.1)
    while time.monotonic() - start < seconds:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start, received
        if not chunk:
            return time.monotonic() - start, received
        received += chunk
    raise AssertionError(f"the server kept the socket open for {seconds} s (received {received[:200]!r})")


def _server_of(server: ServeProcess) -> str:
    return server.env["STALWART_SERVER"]


def _rss_mib(server: ServeProcess) -> float:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _fds(server: ServeProcess) -> int:
    assert server.process is not None
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def _request(sock: socket.socket, path: str = "/v2/health/live") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    sock.settimeout(10)
    response = b""
    while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        response += chunk
    return response


def test_slowloris_sockets_are_closed_at_the_header_deadline(server: ServeProcess) -> None:
    """Clients sending a header line now and then, never finishing: each socket is closed
    (with a 408) within the header deadline."""
    sockets = [_connect(server) for _ in range(20)]
    start = time.monotonic()
    for sock in sockets:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\n")
    open_ = list(sockets)
    while open_ and time.monotonic() - start < HEADER_TIMEOUT + SLACK:
        time.sleep(0.3)
        for sock in list(open_):
            try:
                sock.sendall(b"x-trickle: 1\r\n")
            except OSError:
                open_.remove(sock)
    for sock in sockets:
        _elapsed, received = _closed_within(sock, HEADER_TIMEOUT + SLACK)
        assert received == b"" or received.startswith(b"HTTP/1.1 408"), received
        sock.close()
    assert time.monotonic() - start < HEADER_TIMEOUT + 2 * SLACK


def test_silent_connections_are_closed_and_their_descriptors_freed(server: ServeProcess) -> None:
    """200 sockets that never send a byte hold 200 descriptors only until the header
    deadline. granian accepts no more than the connection limit at once (the rest wait in
    the kernel's backlog, no descriptor of the server's): each batch is closed at the
    deadline, then the next is accepted."""
    before = _fds(server)
    sockets = [_connect(server) for _ in range(200)]
    try:
        time.sleep(0.2)
        held = _fds(server) - before
        if _server_of(server) == "granian":
            assert MAX_CONNECTIONS - 5 <= held <= MAX_CONNECTIONS + 5, held
            batches = math.ceil(len(sockets) / MAX_CONNECTIONS)
        else:
            assert held >= 150, held
            batches = 1
        start = time.monotonic()
        for sock in sockets:
            _closed_within(sock, batches * HEADER_TIMEOUT + SLACK)
        assert time.monotonic() - start < batches * HEADER_TIMEOUT + SLACK
        assert _fds(server) <= before + 5
    finally:
        for sock in sockets:
            sock.close()


def test_oversized_headers_get_431_and_cost_no_memory(server: ServeProcess) -> None:
    """64 MiB of header lines, sent as fast as the client can: 431, the connection closed
    once the head passes the limit (64 KiB on uvicorn, about 400 KiB on granian), long
    before the client is done, and the server's memory not grown by what it was sent."""
    before = _rss_mib(server)
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\n")
        sent = 0
        with suppress(OSError):
            for i in range(64):
                sock.sendall(b"x-big-%d: " % i + b"a" * (1 << 20) + b"\r\n")
                sent += 1
        _elapsed, received = _closed_within(sock, SLACK)
    assert received.startswith(b"HTTP/1.1 431"), received[:200]
    assert sent < 32
    assert _rss_mib(server) - before < 16
    with _connect(server) as sock:
        assert _request(sock).startswith(b"HTTP/1.1 200")


def test_an_idle_keep_alive_connection_is_closed(server: ServeProcess) -> None:
    """After an answered request, a connection that stays quiet is closed at the keep-alive
    timeout."""
    with _connect(server) as sock:
        assert _request(sock).startswith(b"HTTP/1.1 200")
        elapsed, _ = _closed_within(sock, KEEP_ALIVE + SLACK)
        assert elapsed >= KEEP_ALIVE * 0.8


def test_a_trickling_body_gets_408_and_the_connection_closes(server: ServeProcess) -> None:
    """A body sent a byte at a time, slower than the body deadline allows: 408, then the
    connection is closed (the rest of the body is not waited for)."""
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v2/models/any/infer HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n{"
        )
        start = time.monotonic()
        received = b""
        sock.settimeout(0.3)
        while time.monotonic() - start < BODY_TIMEOUT + SLACK:
            try:
                sock.sendall(b" ")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 408"), received
        assert b"STALWART_BODY_TIMEOUT_SECONDS" in received
        _closed_within(sock, SLACK)


def test_a_body_the_app_never_reads_cannot_hold_the_connection(server: ServeProcess) -> None:
    """The app answers without reading the body (405); the client keeps trickling it: the
    connection is closed at the body deadline all the same."""
    with _connect(server) as sock:
        sock.sendall(b"POST /v2/health/live HTTP/1.1\r\nhost: test\r\ncontent-length: 100000\r\n\r\nx")
        start = time.monotonic()
        sock.settimeout(0.3)
        received = b""
        closed = False
        while time.monotonic() - start < BODY_TIMEOUT + 1.0 + SLACK:
            try:
                sock.sendall(b"x")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 405"), received
        assert closed, "the trickling body kept the connection open"


def test_beyond_the_connection_limit_a_connection_is_refused_or_waits(server: ServeProcess) -> None:
    """With the limit's worth of connections open, one more is not served while they are:
    uvicorn answers 503, granian does not accept it (it waits in the kernel's backlog)."""
    if _server_of(server) == "granian":
        _granian_leaves_it_unaccepted(server)
    else:
        _uvicorn_answers_503(server)


def _uvicorn_answers_503(server: ServeProcess) -> None:
    """uvicorn: 503 instead of being served; once the idle ones are closed, requests
    succeed again."""
    idle = [_connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)
        with _connect(server) as extra:
            assert _request(extra).startswith(b"HTTP/1.1 503")
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    with _connect(server) as sock:
        assert _request(sock).startswith(b"HTTP/1.1 200")


def _granian_leaves_it_unaccepted(server: ServeProcess) -> None:
    """granian: not accepted (no descriptor, no answer) until one of the open connections
    closes; then it is served at once."""
    before = _fds(server)
    idle = [_connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)
        with _connect(server) as extra:
            extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\n\r\n")
            extra.settimeout(0.3)
            with pytest.raises(TimeoutError):
                extra.recv(65536)
            assert _fds(server) <= before + MAX_CONNECTIONS + 2
            for sock in idle[:5]:
                sock.close()
            start = time.monotonic()
            response = b""
            extra.settimeout(5)
            while not response.rstrip().endswith(b"}"):
                chunk = extra.recv(65536)
                if not chunk:
                    break
                response += chunk
            assert response.startswith(b"HTTP/1.1 200"), response
            assert time.monotonic() - start < HEADER_TIMEOUT / 2  # served once a slot freed, not at the deadline
    finally:
        for sock in idle:
            sock.close()


def test_the_defaults_are_documented() -> None:
    """The README's configuration table states the defaults Settings has."""
    from stalwart.config import Settings

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    settings = Settings()
    for name in ("keep_alive_seconds", "header_timeout_seconds", "body_timeout_seconds", "max_connections", "max_entities", "model_timeout_seconds"):
        variable = f"STALWART_{name.upper()}"
        assert variable in text, variable
        row = text.split(variable, 1)[1].split("\n", 1)[0]
        assert f"| {getattr(settings, name):g} |" in row, variable
