"""nginx as a plain process in front of local replicas, for the local cluster.

The configuration is generated into a directory of the caller's, with everything nginx
writes kept there (pid file, error and access logs, temporary files): no path of the
system's is touched, and the system's nginx service, if any, is never involved. nginx runs
in the foreground (``daemon off``) in a session of its own, so it is stopped by its process
id, workers included. docs/cluster.md explains each proxy setting.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

ENSURE_NGINX = Path(__file__).resolve().parent.parent / "scripts" / "ensure-nginx"

__all__ = ["AccessLine", "Nginx", "nginx_binary", "render_config"]


def nginx_binary() -> str:
    """The nginx executable, installed first (``scripts/ensure-nginx``) when missing."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        subprocess.run([str(ENSURE_NGINX)], check=True, timeout=600)
        found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found


def render_config(
    directory: Path,
    port: int,
    upstreams: Sequence[str],
    *,
    upstream_keepalive_seconds: float,
    down: Collection[str] = (),
    client_keepalive: bool = False,
    access_log: bool = True,
) -> str:
    """nginx's configuration: ``127.0.0.1:port`` balancing round-robin over ``upstreams``
    (``host:port``) except those ``down`` (out of rotation: not ready), with keep-alive
    connections to them closed after ``upstream_keepalive_seconds`` idle (set it below the
    replicas' own keep-alive, so that nginx, never the replica, closes an idle one), a
    request retried on the next replica only when it never reached one, and each request's
    id, status and replica in ``access.log`` when ``access_log``.

    Clients' connections are closed after each answer unless ``client_keepalive``: the
    rotation changes by reloads, and a reload closes the clients' idle keep-alive
    connections, so a request sent down one at that moment finds it closed, unanswered
    (docs/cluster.md)."""
    d = directory.resolve()
    # As root, nginx would run its workers as nobody, who cannot write the temporary files
    # in this (private) directory: keep them the directory owner's, root.
    user = "user root;\n" if os.geteuid() == 0 else ""
    servers = "\n".join(
        f"        server {address} max_fails=1 fail_timeout=2s{' down' if address in down else ''};" for address in upstreams
    )
    log = f"access_log {d}/access.log stalwart;" if access_log else "access_log off;"
    return f"""# Generated for the local Stalwart cluster (tests/nginx.py); see docs/cluster.md.
{user}daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 1024;  # two per proxied request: plenty on loopback, within the usual fd limit
}}
http {{
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    # Stalwart's own limit (STALWART_MAX_BODY_BYTES) answers bodies up to here with its JSON.
    client_max_body_size 8m;
    server_tokens off;
    {"" if client_keepalive else "keepalive_timeout 0;  # a reload never closes a connection a client is about to use"}
    # One id per request, the client's when it sent one: the replica records it, this log shows it.
    map $http_x_request_id $stalwart_request_id {{
        ""      $request_id;
        default $http_x_request_id;
    }}
    log_format stalwart '$msec\\t$stalwart_request_id\\t$request_method\\t$uri\\t$status\\t$upstream_addr\\t$upstream_status\\t$request_time';
    {log}

    upstream stalwart {{
{servers}
        keepalive 64;
        keepalive_timeout {upstream_keepalive_seconds:g}s;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://stalwart;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Request-ID $stalwart_request_id;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 1s;
            proxy_read_timeout 60s;
            proxy_send_timeout 60s;
            # Another replica gets a request only when this one could not be reached: a
            # refused or timed-out connection, or a GET that failed. A POST that was sent is
            # never sent again (no non_idempotent): the replica may have answered and
            # recorded it. Stalwart's own 502 and 503 (a feature source down, load shed,
            # a model loading) are answers, passed on: see docs/cluster.md.
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries {len(upstreams)};
            proxy_next_upstream_timeout 10s;
        }}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class AccessLine:
    """One request as nginx logged it: when it ended (epoch seconds), its id, method, path,
    the status the client got, each replica tried (in order) and what each answered
    (``502`` when it could not be reached or gave no answer)."""

    time: float
    request_id: str
    method: str
    path: str
    status: int
    upstreams: tuple[str, ...]
    upstream_statuses: tuple[str, ...]
    seconds: float


class Nginx:
    """nginx on ``127.0.0.1:port`` in front of ``upstreams``, its files in ``directory``
(see :func:`render_config` for ``client_keepalive``)."""

    def __init__(
        self,
        directory: Path,
        port: int,
        upstreams: Sequence[str],
        *,
        upstream_keepalive_seconds: float = 4.0,
        client_keepalive: bool = False,
        access_log: bool = True,
    ) -> None:
        self.directory = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.upstreams = list(upstreams)
        self.config = directory / "nginx.conf"
        self.upstream_keepalive_seconds = upstream_keepalive_seconds
        self.access_log = access_log
        self.client_keepalive = client_keepalive
        self.down: frozenset[str] = frozenset()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration, start nginx and wait until it accepts connections."""
        binary = nginx_binary()
        (self.directory / "tmp").mkdir(parents=True, exist_ok=True)
        self._write_config()
        error_log = self.directory / "error.log"
        # -e: the error log from the very start (before the configuration is read, nginx
        # would open the system's); -p: relative paths resolve here.
        argv = [binary, "-p", str(self.directory), "-e", str(error_log), "-c", str(self.config)]
        with (self.directory / "nginx.out").open("ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not listen on {self.url} in {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def set_down(self, down: Collection[str]) -> bool:
        """Take ``down`` (upstream addresses) out of rotation and put the others back, by a
        reload (SIGHUP: new workers take the new configuration, the old ones finish their
        requests). True if that changed anything."""
        wanted = frozenset(down)
        if wanted == self.down:
            return False
        self.down = wanted
        self._write_config()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)
        return True

    def _write_config(self) -> None:
        text = render_config(
            self.directory, self.port, self.upstreams, down=self.down,
            upstream_keepalive_seconds=self.upstream_keepalive_seconds, client_keepalive=self.client_keepalive,
            access_log=self.access_log,
        )
        # Whole or not at all: a reload must never read half a file.
        partial = self.config.with_suffix(".tmp")
        partial.write_text(text)
        partial.replace(self.config)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGQUIT: requests in progress finish), then SIGKILL of its
        session (the master and its workers) if it is still there after ``timeout``."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):  # then killed below
                process.wait(timeout=timeout)
        # Its session id is its pid (start_new_session): workers it left behind go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def tail(self, lines: int = 20) -> str:
        path = self.directory / "error.log"
        if not path.exists():
            return "(no error log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def access(self) -> list[AccessLine]:
        """The access log so far, oldest first (nginx writes each line as its request ends)."""
        path = self.directory / "access.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) != 8:
                continue  # a line being written as we read
            stamp, request_id, method, uri, status, addresses, statuses, seconds = fields
            out.append(
                AccessLine(
                    float(stamp), request_id, method, uri, int(status),
                    _listed(addresses), _listed(statuses), float(seconds),
                )
            )
        return out


def _listed(value: str) -> tuple[str, ...]:
    """nginx's list of upstreams tried (``a, b`` or, across upstream groups, ``a : b``)."""
    if value == "-":
        return ()
    return tuple(part.strip() for part in value.replace(" : ", ", ").split(",") if part.strip())
