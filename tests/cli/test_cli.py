"""The `stalwart` command: models register/list/show, demo, serve, and clean errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc
from typer.testing import CliRunner

from stalwart.cli.main import app
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
STALWART = Path(sys.executable).parent / "stalwart"


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a `stalwart` subprocess: this checkout's code, a private home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    return {**env, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "STALWART_HOME": str(home), "COLUMNS": "200", **extra}


@pytest.fixture
def cli_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("STALWART_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STALWART_HOME", str(home))
    return home


@pytest.fixture
def skops_file(tmp_path: Path, logistic: Any) -> Path:
    import skops.io as sio

    path = tmp_path / "cancer.skops"
    sio.dump(logistic, path)
    return path


def _run(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_register_list_and_show(cli_env: Path, skops_file: Path, logistic: Any) -> None:
    """register adds versions 1, 2...; list shows each model and its versions; show prints a
    version's record: flavor, sha256, signature, metrics, tags."""
    first = _run("models", "register", "cancer", str(skops_file), "--flavor", "sklearn", "--metric", "auc=0.98", "--tag", "team=risk", "--description", "first try")
    assert "registered cancer:1 (sklearn, sha256" in first.output
    _run("models", "register", "cancer", str(skops_file), "--flavor", "sklearn")
    listed = _run("models", "list").output
    assert "cancer" in listed
    assert "1, 2" in listed
    shown = _run("models", "show", "cancer", "--version", "1").output
    assert "cancer:1" in shown
    assert "flavor=sklearn" in shown
    assert "metrics: auc=0.98" in shown
    assert "tags: team=risk" in shown
    assert "about     first try" in shown
    assert "input-0" in shown
    assert "predict_proba" in shown
    from stalwart.config import Settings
    from stalwart.registry import Registry

    registry = Registry.open(Settings(home=cli_env))
    try:
        mv = registry.get("cancer")
        assert mv.version == 2
        assert f"sha256    {registry.get('cancer', 1).sha256}" in shown
        x = np.zeros((1, 30))
        np.testing.assert_array_equal(registry.load(mv).predict({"input-0": x}, ["predict"])["predict"], logistic.predict(x))
    finally:
        registry.db.dispose()
    latest = _run("models", "show", "cancer").output
    assert "cancer:2" in latest


def test_show_marks_a_trusted_pickle(cli_env: Path, tmp_path: Path, logistic: Any) -> None:
    """A version registered from a pickle says, in show, that it was explicitly trusted."""
    import pickle

    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(logistic))
    _run("models", "register", "pickled", str(path), "--flavor", "sklearn", "--trust-pickle")
    assert "trust     pickle (explicitly trusted at registration)" in _run("models", "show", "pickled").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "auc"], "--metric takes KEY=VALUE, got 'auc'"),
        (["--metric", "auc=high"], "--metric auc: 'high' is not a number"),
        (["--tag", "=x"], "--tag takes KEY=VALUE, got '=x'"),
    ],
)
def test_bad_metric_and_tag_options(cli_env: Path, skops_file: Path, args: list[str], message: str) -> None:
    """A malformed --metric or --tag is refused with what it should look like."""
    result = CliRunner().invoke(app, ["models", "register", "cancer", str(skops_file), "--flavor", "sklearn", *args])
    assert result.exit_code == 1
    assert message in result.output


def test_errors_are_one_line_not_a_traceback(home: Path) -> None:
    """A Stalwart error from the real console script is one 'error:' line on stderr and
    exit code 1, never a Python traceback."""
    result = subprocess.run([str(STALWART), "models", "show", "ghost"], env=_env(home), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "error: model 'ghost' is not registered; list models with 'stalwart models list'" in result.stderr
    assert "Traceback" not in result.stderr
    bad = subprocess.run([str(STALWART), "serve"], env=_env(home, STALWART_PORT="eighty"), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "error: invalid settings: STALWART_PORT" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.fixture
def serving(tmp_path: Path, skops_file: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`stalwart serve` in its own process, with one model registered by the CLI, and its
    gRPC service on the port after the HTTP one's."""
    home = tmp_path / "serve-home"
    subprocess.run([str(STALWART), "models", "register", "cancer", str(skops_file), "--flavor", "sklearn"], env=_env(home), check=True, capture_output=True, timeout=120)
    port = free_port()
    process = subprocess.Popen(
        [str(STALWART), "serve", "--port", str(port), "--grpc-port", str(free_port())],
        env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def test_serve_answers_ready_and_stops_on_sigterm(serving: tuple[str, subprocess.Popen[str]]) -> None:
    """`stalwart serve` becomes ready, serves the registered model (over REST, and over
    gRPC on --grpc-port), writes JSON logs when not on a terminal, and shuts down cleanly
    on SIGTERM."""
    url, process = serving
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "stalwart serve did not become ready"
        time.sleep(0.1)
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30], "data": [0.0] * 30}]}
    response = httpx.post(f"{url}/v2/models/cancer/infer", json=body, timeout=10)
    assert response.status_code == 200
    assert response.json()["model_version"] == "1"
    grpc_target = f"127.0.0.1:{process.args[-1]}"  # type: ignore[index]  # the fixture's --grpc-port, last
    with tritonclient.grpc.InferenceServerClient(grpc_target) as grpc_client:
        assert grpc_client.is_model_ready("cancer")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal so a supervisor sees it.
    assert process.returncode == -signal.SIGTERM
    assert "Traceback" not in stderr
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    started = next(line for line in lines if line["event"] == "serving")
    assert started["url"] == url
    assert started["grpc"] == grpc_target
    assert started["admin_token_file"].endswith("admin_token")
    assert any(line["event"] == "request" and line["path"] == "/v2/models/cancer/infer" and line["status"] == 200 for line in lines)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """`stalwart demo --once` trains, registers, serves and calls two models, then exits 0."""
    home = tmp_path / "demo"
    result = subprocess.run(
        [str(STALWART), "demo", "--once", "--port", "0", "--home", str(home)],
        env=_env(tmp_path / "unused"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo OK" in result.stdout
    assert (home / "registry.db").exists()
