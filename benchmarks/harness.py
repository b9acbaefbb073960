"""Servers as subprocesses on free loopback ports, driven by wrk, reported as medians.

Every contestant runs under uvicorn with the same settings (``loop`` and ``http`` left on
``auto``, which picks uvloop and httptools when installed, as ``stalwart serve`` does), in
its own process, started from this one with the numeric libraries pinned to one thread.
Every measurement is bounded in time: wrk runs for a few seconds with ``--timeout 10s``
and is itself killed if it overruns.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import PINNED_THREADS

WRK = "/usr/bin/wrk"
RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A server process on a loopback port; stop it with :meth:`stop` (SIGTERM, then SIGKILL)."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str = "/v2/health/ready", timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as response:  # noqa: S310 - our own loopback server
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} was not ready in {timeout:.0f} s:\n{tail}")

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s); then SIGKILL whatever the server had started that
        outlived it (a worker process it did not reap)."""
        if self.process.poll() is None:
            children = descendants(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def bench_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, thread pins included, plus ``extra``; the current
    checkout's ``src`` first on the path so the code under test is this tree's."""
    env = dict(os.environ)
    env.update(PINNED_THREADS)
    src = Path(__file__).resolve().parent.parent / "src"
    root = src.parent
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(src), str(root), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra or {})
    return env


def start_server(
    name: str, argv: Sequence[str], env: Mapping[str, str], workdir: Path, *, port: int | None = None
) -> Server:
    """Start ``argv`` in ``workdir``, output to ``<name>.log``; the server's port is ``port``
    or else the one after ``--port`` in ``argv``."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=workdir
        )
    # The port is chosen before the server binds it; a clash shows up as a failed start.
    if port is None:
        port = int(argv[argv.index("--port") + 1])
    return Server(name, port, process, log)


def stalwart_command(port: int) -> list[str]:
    """``stalwart serve`` from this virtualenv."""
    script = Path(sys.executable).with_name("stalwart")
    command = str(script) if script.exists() else shutil.which("stalwart")
    if command is None:
        raise RuntimeError("the 'stalwart' command is not installed; run 'make' first")
    return [command, "serve", "--host", "127.0.0.1", "--port", str(port)]


def uvicorn_command(factory: str, port: int) -> list[str]:
    """uvicorn as ``stalwart serve`` runs it: no access log, no server header."""
    return [
        sys.executable, "-m", "uvicorn", "--factory", factory,
        "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--no-server-header", "--log-level", "warning",
    ]


@contextlib.contextmanager
def running(servers: Sequence[Server]) -> Iterator[Sequence[Server]]:
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


# --- wrk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx responses plus socket errors
    non2xx: int = 0  # of which answers with a status other than 2xx or 3xx

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.requests > 0


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk latency: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Requests/s, p50 and p99 (from ``--latency``) and error counts from wrk's report."""
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    if not (p50 and p99 and rps and total):
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    statuses = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    non2xx = int(statuses.group(1)) if statuses else 0
    errors = non2xx
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return WrkResult(
        float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), int(total.group(1)), errors, non2xx
    )


def lua_script(workdir: Path, body: bytes) -> Path:
    """A wrk script that POSTs ``body`` as JSON."""
    text = body.decode()
    if "]]" in text:
        raise ValueError("the body cannot contain ']]' (it goes in a Lua long string)")
    path = workdir / f"post-{abs(hash(body))}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{text}]]\n"
    )
    return path


def wrk(url: str, script: Path, *, connections: int, seconds: float) -> WrkResult:
    """One wrk run: one thread, ``connections`` connections, ``seconds`` long."""
    argv = [
        WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency",
        "-s", str(script), url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def wrk_available() -> bool:
    return Path(WRK).exists()


# --- aggregation and reporting ------------------------------------------------------------


@dataclass
class Series:
    """Repeated measurements of one configuration; reported as medians."""

    runs: list[WrkResult] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per request, all threads and child processes

    def add(self, result: WrkResult) -> None:
        self.runs.append(result)

    @property
    def cpu(self) -> float:
        """Median server CPU time per request, microseconds (steadier than req/s when the
        machine is shared: it does not count time spent waiting for a core)."""
        return statistics.median(self.cpu_us) if self.cpu_us else float("nan")

    @property
    def probe(self) -> float | None:
        """Median of what the run's probe measured (mean rows per batched call)."""
        return statistics.median(self.probes) if self.probes else None

    @property
    def rps(self) -> float:
        return statistics.median(r.requests_per_s for r in self.runs)

    @property
    def p50(self) -> float:
        return statistics.median(r.p50_ms for r in self.runs)

    @property
    def p99(self) -> float:
        return statistics.median(r.p99_ms for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    @property
    def non2xx(self) -> int:
        return sum(r.non2xx for r in self.runs)

    @property
    def spread(self) -> float:
        """(max - min) / median of requests/s over the repeats, as a noise indicator."""
        values = [r.requests_per_s for r in self.runs]
        return (max(values) - min(values)) / statistics.median(values) if values else 0.0


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def environment_notes(duration: float, repeats: int, servers: str = "uvicorn") -> str:
    """What a reader needs to judge the figures: machine, pins, client placement, method
    (``servers``: what serves the contestants, uvicorn unless said)."""
    try:
        load = os.getloadavg()
        load_text = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:
        load_text = "n/a"
    loops = []
    for module in ("uvloop", "httptools"):
        try:
            __import__(module)
            loops.append(module)
        except ImportError:
            loops.append(f"no {module}")
    cores = os.cpu_count() or 1
    return "\n".join([
        f"- machine: {platform.machine()} {cores} cores, Python {platform.python_version()}, "
        f"load average at start {load_text} (the machine may be shared)",
        f"- numeric threads pinned: {', '.join(f'{k}=1' for k in PINNED_THREADS)}",
        f"- servers: {servers}, one worker, loop/http auto ({', '.join(loops)}), loopback only",
        f"- client: wrk -t1 --timeout 10s --latency, one row per request, {duration:g} s per "
        f"point, median of {repeats} runs, contestants interleaved",
        f"- the client shares the machine: wrk's one thread takes up to one of the {cores} "
        f"cores, so a server gets about {max(cores - 1, 1)} core(s) under load",
    ])


def write_results(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.md"
    path.write_text(text)
    return path


def fmt_ms(value: float) -> str:
    return f"{value:.2f}"


def fmt_rps(value: float) -> str:
    return f"{value:,.0f}"


# --- a matrix of contestants, models and concurrencies -------------------------------------


@dataclass(frozen=True)
class Target:
    """One request stream to measure: a server, a path, a body."""

    server: Server
    path: str
    script: Path


def run_matrix(
    targets: Mapping[tuple[str, str], Target],
    concurrencies: Sequence[int],
    *,
    seconds: float,
    repeats: int,
    warmup: float = 1.0,
    progress: bool = True,
    probe: Callable[[Target], tuple[float, float]] | None = None,
) -> dict[tuple[str, str, int], Series]:
    """Measure every ``(contestant, model)`` target at every concurrency, ``repeats`` times.

    Repeats are the outer loop and contestants the inner one, so a slow minute on a
    shared machine lands on every contestant rather than on one. ``probe`` returns two
    counters of a target before and after each run; the ratio of their increases is kept
    (for a batching server: rows per model call).
    """
    for target in targets.values():
        wrk(target.server.url + target.path, target.script, connections=8, seconds=warmup)
    results: dict[tuple[str, str, int], Series] = {}
    total = repeats * len(concurrencies) * len(targets)
    done = 0
    for _ in range(repeats):
        for connections in concurrencies:
            for (contestant, model), target in targets.items():
                before = probe(target) if probe else (0.0, 0.0)
                cpu_before = tree_cpu(target.server.process.pid)
                result = wrk(
                    target.server.url + target.path, target.script,
                    connections=connections, seconds=seconds,
                )
                cpu = tree_cpu(target.server.process.pid) - cpu_before
                series = results.setdefault((contestant, model, connections), Series())
                series.add(result)
                if result.requests:
                    series.cpu_us.append(cpu / result.requests * 1e6)
                if probe is not None:
                    after = probe(target)
                    if after[1] > before[1]:
                        series.probes.append((after[0] - before[0]) / (after[1] - before[1]))
                done += 1
                if progress:
                    print(
                        f"  [{done}/{total}] {contestant:<18} {model:<8} c={connections:<4} "
                        f"{result.requests_per_s:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                        f"p99 {result.p99_ms:7.2f} ms" + ("" if result.ok else f"  ERRORS {result.errors}"),
                        file=sys.stderr, flush=True,
                    )
    return results


def metric_sums(server: Server, names: Sequence[str], labels: str) -> list[float]:
    """The values of ``names{labels}`` in the server's /metrics (0 when absent)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:  # noqa: S310 - our own loopback server
        text = response.read().decode()
    values = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        for name in names:
            if line.startswith(f"{name}{{{labels}}} "):
                values[name] = float(line.rsplit(" ", 1)[1])
    return [values[n] for n in names]


_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) one process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs, that are alive now."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found += children
        pending += children
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds a process and its live descendants have used so far (a server that runs
    its model in worker processes, as MLServer does, is charged for them)."""
    total = 0.0
    for each in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            total += process_cpu(each)
    return total


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process and its live descendants, bytes: now (``VmRSS``), and the
    sum of each one's own peak (``VmHWM``; at least the tree's peak, shared pages counted in
    each process)."""

    rss: int
    peak: int


def tree_memory(pid: int) -> Memory:
    rss = peak = 0
    for each in (pid, *descendants(pid)):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss += _kib(fields.get("VmRSS", "0 kB"))
        peak += _kib(fields.get("VmHWM", "0 kB"))
    return Memory(rss, peak)


def _kib(text: str) -> int:
    return int(text.split()[0]) * 1024
