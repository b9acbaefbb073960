"""A py-spy profile of a server under wrk load, summarised by thread and by function.

py-spy samples the server process from outside (no code in the server changes), with
``--idle`` so the share of time a thread spends waiting shows up, and ``--threads`` so the
event loop and the model thread are told apart. The summary gives, per thread, how busy it
was and the functions where its busy samples sit (self time and total time).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import Target, WrkResult, wrk

# Innermost frames where a thread is waiting rather than working.
_IDLE_LEAVES = ("select (", "poll (", "wait (threading", "_worker (concurrent", "_worker (thread.py", "acquire (")
# uvloop runs in C under asyncio's Runner.run: polling sockets, parsing HTTP, scheduling.
_LOOP_LEAF = "Runner.run ("


@dataclass(frozen=True)
class Profile:
    samples: int
    load: WrkResult
    text: str


def py_spy() -> str:
    path = Path(sys.executable).with_name("py-spy")
    if not path.exists():
        raise RuntimeError("py-spy is not installed; it is in the dev dependency group (make test installs it)")
    return str(path)


def profile_under_load(target: Target, *, connections: int, seconds: float, workdir: Path) -> Profile:
    """Sample ``target``'s server with py-spy while wrk drives it."""
    raw = workdir / "profile.txt"
    argv = [
        py_spy(), "record", "--pid", str(target.server.process.pid), "--duration", str(int(seconds) + 1),
        "--rate", "250", "--idle", "--threads", "--format", "raw", "--output", str(raw), "--nonblocking",
    ]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    holder: dict[str, WrkResult] = {}
    driver = threading.Thread(
        target=lambda: holder.setdefault(
            "load", wrk(target.server.url + target.path, target.script, connections=connections, seconds=seconds)
        )
    )
    driver.start()
    driver.join(timeout=seconds + 40)
    try:
        _, err = spy.communicate(timeout=seconds + 40)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')}")
    summary, samples = summarise(raw.read_text())
    return Profile(samples, holder["load"], summary)


def _function(frame: str) -> str:
    # "name (path/to/module.py:123)" -> "name (module.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def _component(frame: str) -> str:
    """Which library a frame belongs to: the first part of its module path."""
    where = frame.rpartition(" (")[2].rsplit(":", 1)[0]
    if "/" in where:
        return where.split("/", 1)[0]
    if where in _OUR_FILES:
        return "stalwart"
    return "python stdlib" if where.endswith(".py") else where


_OUR_FILES = {p.name for p in (Path(__file__).resolve().parent.parent / "src" / "stalwart").rglob("*.py")}


def summarise(raw: str, top: int = 12) -> tuple[str, int]:
    """Per thread: where its samples went (Python, uvloop's C code, waiting), its Python
    time by library, and the functions with the most self time."""
    totals: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    in_loop: Counter[str] = Counter()
    by_component: dict[str, Counter[str]] = {}
    by_function: dict[str, Counter[str]] = {}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        name = _thread_name(frames[0])
        frames = frames[1:]
        totals[name] += count
        leaf = frames[-1] if frames else ""
        if any(marker in leaf for marker in _IDLE_LEAVES):
            continue
        if leaf.startswith(_LOOP_LEAF):
            in_loop[name] += count
            continue
        busy[name] += count
        by_component.setdefault(name, Counter())[_component(leaf)] += count
        by_function.setdefault(name, Counter())[_function(leaf)] += count
    lines = []
    for name, total in totals.most_common():
        python = busy[name] / total if total else 0.0
        loop = in_loop[name] / total if total else 0.0
        lines.append(
            f"### thread {name}: Python {python:.0%}, uvloop C {loop:.0%}, waiting "
            f"{max(0.0, 1 - python - loop):.0%} of {total} samples"
        )
        if not busy[name]:
            continue
        components = ", ".join(
            f"{component} {n / busy[name]:.0%}" for component, n in by_component[name].most_common(8)
        )
        lines += ["", f"Python self time by library: {components}", ""]
        lines += ["| self % of Python | function |", "|---|---|"]
        lines += [
            f"| {n / busy[name]:.0%} | {function} |" for function, n in by_function[name].most_common(top)
        ]
        lines.append("")
    return "\n".join(lines), sum(totals.values())


def _thread_name(frame: str) -> str:
    # py-spy --threads labels a stack "thread (<tid>): <name>".
    return frame.split("): ", 1)[1] if "): " in frame else frame
