"""Settings from STALWART_* variables, and the generated admin token."""

from __future__ import annotations

import multiprocessing
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from stalwart.config import Settings, load_settings
from stalwart.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("STALWART_"):
            monkeypatch.delenv(name)


def test_defaults_need_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no variables set: SQLite under ./.stalwart, port 8080, 8 MiB bodies."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.resolved_db_url() == f"sqlite:///{tmp_path / '.stalwart' / 'registry.db'}"
    assert settings.artifact_root() == tmp_path / ".stalwart" / "artifacts"
    assert (settings.port, settings.max_body_bytes, settings.preload) == (8080, 8 * 1024 * 1024, True)


def test_settings_come_from_stalwart_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every field is STALWART_<FIELD>; explicit overrides win over the environment."""
    monkeypatch.setenv("STALWART_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("STALWART_DB_URL", "postgresql://app:s3cret@db/stalwart")
    monkeypatch.setenv("STALWART_PORT", "9001")
    monkeypatch.setenv("STALWART_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("STALWART_LOG_FORMAT", "console")
    monkeypatch.setenv("STALWART_PRELOAD", "false")
    monkeypatch.setenv("STALWART_REGISTRY_POLL_SECONDS", "0.5")
    settings = load_settings()
    assert settings.home == tmp_path / "h"
    assert settings.resolved_db_url() == "postgresql://app:s3cret@db/stalwart"
    assert (settings.port, settings.max_body_bytes, settings.log_format) == (9001, 1024, "console")
    assert (settings.preload, settings.registry_poll_seconds) == (False, 0.5)
    assert "s3cret" not in repr(settings)  # secrets never print
    assert load_settings(port=7000).port == 7000


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STALWART_PORT", "eighty"),
        ("STALWART_PORT", "70000"),
        ("STALWART_MAX_BODY_BYTES", "0"),
        ("STALWART_LOG_FORMAT", "xml"),
        ("STALWART_LOG_LEVEL", "loud"),
        ("STALWART_PRELOAD", "perhaps"),
        ("STALWART_REGISTRY_POLL_SECONDS", "-1"),
        ("STALWART_WORKERS", "0"),
        ("STALWART_WORKERS", "many"),
    ],
)
def test_an_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """A bad value is a ConfigError naming the variable, not a pydantic traceback."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable}: "):
        load_settings()


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several mistakes are reported together, so one run shows all of them."""
    monkeypatch.setenv("STALWART_PORT", "x")
    monkeypatch.setenv("STALWART_LOG_LEVEL", "y")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "STALWART_PORT" in info.value.message
    assert "STALWART_LOG_LEVEL" in info.value.message


def test_admin_token_is_generated_once_private_and_reused(tmp_path: Path) -> None:
    """Without STALWART_ADMIN_TOKEN a token is generated into a file only its owner can
    read, and every later process reads the same token from it."""
    settings = Settings(home=tmp_path / "home")
    token = settings.resolved_admin_token()
    path = settings.admin_token_file()
    assert path.read_text() == token
    assert len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings(home=tmp_path / "home").resolved_admin_token() == token
    assert sorted(p.name for p in path.parent.iterdir()) == ["admin_token"]  # no temp files left


def test_a_configured_admin_token_wins_and_writes_no_file(tmp_path: Path) -> None:
    """STALWART_ADMIN_TOKEN, when set, is the token, and no file is generated."""
    settings = Settings(home=tmp_path / "home", admin_token="given")  # type: ignore[arg-type]
    assert settings.resolved_admin_token() == "given"
    assert not settings.admin_token_file().exists()


def test_concurrent_threads_agree_on_one_token(tmp_path: Path) -> None:
    """Threads creating the token at once all get the same one, without errors."""
    for attempt in range(10):
        settings = Settings(home=tmp_path / f"home-{attempt}")
        with ThreadPoolExecutor(8) as pool:
            tokens = set(pool.map(Settings.resolved_admin_token, [settings] * 8))
        assert len(tokens) == 1
        assert tokens == {settings.admin_token_file().read_text()}


def _read_token(home: str, queue: Any) -> None:
    queue.put(Settings(home=Path(home)).resolved_admin_token())


def test_concurrent_processes_agree_on_one_token(tmp_path: Path) -> None:
    """Processes (a server and a CLI) creating the token at once all get the same one."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    home = str(tmp_path / "home")
    procs = [ctx.Process(target=_read_token, args=(home, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    tokens = {queue.get(timeout=30) for _ in procs}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert tokens == {(tmp_path / "home" / "admin_token").read_text()}


def test_the_server_reads_the_same_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """create_app() without settings reads STALWART_* too, and a bad value is the same
    ConfigError naming the variable."""
    from stalwart.serving.app import create_app

    monkeypatch.setenv("STALWART_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STALWART_MAX_BODY_BYTES", "2048")
    app = create_app()
    try:
        assert app.state.settings.max_body_bytes == 2048
    finally:
        app.state.registry.db.dispose()
    monkeypatch.setenv("STALWART_MAX_BODY_BYTES", "lots")
    with pytest.raises(ConfigError, match="STALWART_MAX_BODY_BYTES"):
        create_app()


def test_workers_are_uvicorn_workers() -> None:
    """Several worker processes share the port through sockets handed to uvicorn: asked of
    granian, the settings say which two variables disagree."""
    assert load_settings(workers=2, server="uvicorn").workers == 2
    assert load_settings(workers=1, server="granian").server == "granian"
    with pytest.raises(ConfigError, match=r"STALWART_WORKERS: .*STALWART_SERVER=uvicorn"):
        load_settings(workers=2, server="granian")


def test_the_server_listens_on_loopback_and_its_home_is_private_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without variables the server binds 127.0.0.1 only (exposing it is a decision), and the
    home directories Stalwart makes are readable by their owner alone (docs/security.md)."""
    monkeypatch.chdir(tmp_path)
    previous = os.umask(0o022)
    try:
        settings = load_settings()
        assert settings.host == "127.0.0.1"
        settings.resolved_admin_token()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / ".stalwart").stat().st_mode) == 0o700
