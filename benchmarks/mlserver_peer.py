"""MLServer 1.7.1 (with mlserver-sklearn) as a peer in the benchmarks: its own virtual
environment, a model repository that serves one scikit-learn estimator from a joblib file,
the server on free loopback ports.

The environment is ``.peers/mlserver`` in the checkout (not tracked by git), made by
``benchmarks/peers/setup-mlserver`` from the fully pinned
``benchmarks/peers/mlserver-requirements.txt`` the first time it is needed (and again when
that file changes). MLServer then runs on its defaults except where a shared machine needs
otherwise: loopback only and free ports for its HTTP, gRPC and metrics servers.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

from benchmarks.harness import Server, free_port, start_server

NAME = "MLServer 1.7.1"
ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".peers" / "mlserver"
SETUP = ROOT / "benchmarks" / "peers" / "setup-mlserver"
# Packages whose versions must be ours for MLServer to load the very estimator the other
# contestants call (pickled by joblib, which ties it to the scikit-learn that wrote it).
_SHARED = ("sklearn", "joblib")


def ensure_environment() -> Path:
    """Make MLServer's virtual environment if it is missing or stale; returns its
    ``mlserver`` command. Raises RuntimeError with pip's output when it cannot be made."""
    done = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{SETUP.relative_to(ROOT)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    _check_versions()
    return VENV / "bin" / "mlserver"


def versions_in_environment(modules: tuple[str, ...]) -> dict[str, str]:
    """``__version__`` of each module as MLServer's environment has it."""
    code = "import importlib, json, sys; print(json.dumps({m: importlib.import_module(m).__version__ for m in sys.argv[1:]}))"
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", code, *modules],
        capture_output=True, text=True, timeout=120, check=True,
    )
    found: dict[str, str] = json.loads(done.stdout)
    return found


def describe() -> str:
    """One line on how MLServer runs here, for a report."""
    code = (
        "import importlib.util, json, platform, mlserver, uvloop; print(json.dumps(["
        "platform.python_version(), mlserver.__version__, uvloop.__version__, "
        "importlib.util.find_spec('httptools') is not None]))"
    )
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120, check=True)
    python, version, uvloop, httptools = json.loads(done.stdout)
    parser = "httptools" if httptools else "h11, as httptools is not among its dependencies"
    return (
        f"MLServer {version} with mlserver-sklearn in its own environment (Python {python}, uvloop "
        f"{uvloop}, uvicorn's HTTP parser {parser}), on its defaults: parallel_workers=1 (the "
        "model runs in one worker process), debug=True (an access log line per request), "
        "REST, gRPC and metrics servers; loopback only, free ports"
    )


def start(workdir: Path, model_name: str, model_file: Path, env: Mapping[str, str]) -> Server:
    """``mlserver start`` on a model repository under ``workdir`` that serves
    ``model_file`` (a joblib file) as ``model_name`` (``env``: the process environment;
    thread pins included)."""
    command = ensure_environment()
    repository = workdir / "mlserver-models"
    model_dir = repository / model_name
    model_dir.mkdir(parents=True)
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": model_name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model_file.resolve())},
    }))
    port = free_port()
    (repository / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
    }))
    # MLServer's environment is complete by itself: nothing of this checkout on its path.
    clean = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return start_server(NAME, [str(command), "start", str(repository)], clean, workdir, port=port)


def _check_versions() -> None:
    import importlib

    theirs = versions_in_environment(_SHARED)
    ours = {m: str(importlib.import_module(m).__version__) for m in _SHARED}
    if theirs != ours:
        raise RuntimeError(
            f"MLServer's environment has {theirs}, this one {ours}: pin the same versions in "
            "benchmarks/peers/mlserver-requirements.in and .txt, so MLServer loads the same model"
        )
