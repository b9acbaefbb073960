"""deploy/Dockerfile, checked without a Docker engine (none runs where the tests run, and
no image registry is reachable): parsed with dockerfile-parse and linted by hadolint. What
cannot be checked here is the build itself; every instruction's inputs are."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

from dockerfile_parse import DockerfileParser
from packaging.specifiers import SpecifierSet

from stalwart.cli.main import app as cli
from stalwart.config import Settings
from tests.deploy.conftest import Exported
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions (comments left out), one list per stage."""
    stages: list[list[dict[str, Any]]] = [[]]
    for instruction in DockerfileParser(str(DOCKERFILE)).structure:
        if instruction["instruction"] == "COMMENT":
            continue
        if instruction["instruction"] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages  # stages[0]: the ARGs before the first FROM


def _values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def _args(stage: list[dict[str, Any]]) -> dict[str, str]:
    pairs = (value.split("=", 1) for value in _values(stage, "ARG"))
    return {name: default.strip('"') for name, default in pairs}


def test_two_stages_and_the_runtime_gets_only_the_environment() -> None:
    """A build stage and a runtime stage; the runtime copies the installed environment and
    nothing else from the build (no uv, no sources, no build tools)."""
    global_args, build, runtime = _stages()
    assert [s[0]["value"] for s in (build, runtime)] == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    assert _values(runtime, "COPY") == ["--from=build /opt/stalwart /opt/stalwart"]
    assert not any("uv" in run.split() or "pip" in run.split() for run in _values(runtime, "RUN"))
    assert global_args[0]["value"].startswith("PYTHON_IMAGE=python:")


def test_it_installs_exactly_the_lock_with_the_makefiles_uv() -> None:
    """`uv sync --locked` (a lock out of step with pyproject.toml fails the build), from
    uv.lock copied in first, with the uv version the Makefile pins and extras that exist,
    on a Python the project supports."""
    global_args, build, _ = _stages()
    makefile = (ROOT / "Makefile").read_text()
    (pinned,) = re.findall(r"^UV_VERSION\s*:=\s*(\S+)$", makefile, re.MULTILINE)
    args = _args(build)
    assert args["UV_VERSION"] == pinned
    assert 'pip install --no-cache-dir "uv==${UV_VERSION}"' in _values(build, "RUN")
    runs = [run for run in _values(build, "RUN") if "uv sync" in run]
    assert len(runs) == 2
    for run in runs:
        assert "--locked" in run.split()
        assert "--no-dev" in run.split()
    copies = _values(build, "COPY")
    assert copies[0] == "pyproject.toml uv.lock ./"
    first_sync = next(i for i, x in enumerate(build) if x["instruction"] == "RUN" and "uv sync" in x["value"])
    lock_copy = next(i for i, x in enumerate(build) if x["instruction"] == "COPY" and "uv.lock" in x["value"])
    assert lock_copy < first_sync
    extras = set(args["STALWART_EXTRAS"].split())
    assert extras
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])
    python = re.match(r"PYTHON_IMAGE=python:(\d+\.\d+)", global_args[0]["value"])
    assert python is not None
    assert python[1] in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_it_runs_as_an_unprivileged_user() -> None:
    """The final USER is the uid created for it, never root, and owns STALWART_HOME."""
    _, _, runtime = _stages()
    users = _values(runtime, "USER")
    assert users, "the runtime stage sets no USER: the server would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in {"0", "root"}
    (create,) = [run for run in _values(runtime, "RUN") if "useradd" in run]
    assert f"--uid {uid}" in create
    home = DockerfileParser(str(DOCKERFILE)).envs["STALWART_HOME"]
    assert f"-o stalwart -g stalwart -m 0700 {home}" in create
    assert runtime[-1]["instruction"] == "CMD"
    assert [i["instruction"] for i in runtime].index("USER") > max(i for i, x in enumerate(runtime) if x["instruction"] == "RUN")


def test_no_secret_is_baked_into_the_image() -> None:
    """No ENV or ARG sets a secret setting (Stalwart's SecretStr fields), anything named
    like a credential, or a URL carrying a password."""
    secret = {f"STALWART_{name.upper()}" for name, f in Settings.model_fields.items() if "SecretStr" in repr(f.annotation)}
    assert "STALWART_DB_URL" in secret
    assert "STALWART_ADMIN_TOKEN" in secret
    named: dict[str, str] = {}
    for stage in _stages():
        named.update(_args(stage))
    parser = DockerfileParser(str(DOCKERFILE))
    named.update(parser.envs)
    for stage in _stages()[1:]:
        for value in _values(stage, "ENV"):
            named.update(dict(re.findall(r"(\w+)=(\S+)", value)))
    assert not secret & set(named)
    assert not [n for n in named if re.search(r"TOKEN|PASSWORD|SECRET|_KEY$|CREDENTIAL", n)]
    assert not [v for v in named.values() if re.search(r"://[^/\s:@]+:[^/\s@]+@", v)]


def test_it_exposes_and_serves_the_port_it_listens_on() -> None:
    """EXPOSE is the port the server listens on in the image (STALWART_PORT, Stalwart's
    default), on every interface; the entry point is the `stalwart` console script and its
    default command `serve`; the volume is STALWART_HOME."""
    _, _, runtime = _stages()
    envs = DockerfileParser(str(DOCKERFILE)).envs
    assert _values(runtime, "EXPOSE") == [envs["STALWART_PORT"]] == [str(Settings.model_fields["port"].default)]
    assert envs["STALWART_HOST"] == "0.0.0.0"  # noqa: S104 - inside a container, the container's interfaces
    assert json.loads(_values(runtime, "ENTRYPOINT")[0]) == ["stalwart"]
    assert "stalwart" in PYPROJECT["project"]["scripts"]
    (command,) = json.loads(_values(runtime, "CMD")[0])
    assert command in {c.name or (c.callback.__name__ if c.callback else "") for c in cli.registered_commands}
    assert json.loads(_values(runtime, "VOLUME")[0]) == [envs["STALWART_HOME"]]


def _health_check() -> list[str]:
    _, _, runtime = _stages()
    (check,) = _values(runtime, "HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    argv: list[str] = json.loads(command)
    return argv


def test_the_health_check_tells_a_live_server_from_a_dead_one(exported: Exported) -> None:
    """The HEALTHCHECK command, run as the image would run it (its Python, STALWART_PORT):
    0 against a live server's /v2/health/live, 1 where nothing answers."""
    argv = _health_check()
    assert argv[:2] == ["python", "-c"]
    assert "/v2/health/live" in argv[2]
    port = exported.server.url.rsplit(":", 1)[1]
    live = subprocess.run([sys.executable, *argv[1:]], env={"STALWART_PORT": port}, capture_output=True, timeout=30, check=False)
    assert live.returncode == 0, live.stderr
    dead = subprocess.run([sys.executable, *argv[1:]], env={"STALWART_PORT": str(free_port())}, capture_output=True, timeout=30, check=False)
    assert dead.returncode == 1


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sysconfig.get_path("scripts")) / "hadolint"
    assert binary.exists(), f"hadolint is missing from {binary.parent}: run `make .venv/.installed`"
    return subprocess.run([str(binary), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    """hadolint (its rules and ShellCheck on every RUN) passes the Dockerfile; the same
    binary flags a careless one, so a passing run means it looked."""
    result = _hadolint(DOCKERFILE)
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nRUN cd /app && pip install stalwart\n")
    flagged = _hadolint(careless)
    assert flagged.returncode == 1
    for rule in ("DL3006", "DL3008", "DL3013"):
        assert rule in flagged.stdout


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    """.dockerignore leaves out everything but what the build copies (no .venv, no .git, no
    local registry under .stalwart reaches the daemon), and keeps each copied path."""
    _, build, _ = _stages()
    copied = {part.rstrip("/") for value in _values(build, "COPY") for part in value.split()[:-1]}
    assert copied == {"pyproject.toml", "uv.lock", "README.md", "src"}
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    for source in copied:
        assert f"!{source}" in patterns or f"!{source}/" in patterns, f"{source} is copied but .dockerignore leaves it out"
