"""One size grammar for every setting that is an amount of memory (STALWART_MODEL_MEMORY)."""

from __future__ import annotations

import pytest

from stalwart.config import load_settings
from stalwart.errors import ConfigError
from stalwart.sizes import format_bytes, parse_bytes


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1_048_576),
        (1_048_576, 1_048_576),
        ("512MiB", 512 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("2Gi", 2 * 1024**3),
        ("2G", 2 * 1024**3),
        ("2g", 2 * 1024**3),
        ("1.5 GB", 1_500_000_000),
        ("64k", 64 * 1024),
        ("64kB", 64_000),
        ("100B", 100),
        (" 3 MB ", 3_000_000),
        ("1TiB", 1024**4),
    ],
)
def test_sizes_in_bytes_and_units(text: object, size: int) -> None:
    """Bytes, or a number and a binary (KiB, Gi, G) or decimal (kB, GB) unit."""
    assert parse_bytes(text, "STALWART_MODEL_MEMORY") == size


@pytest.mark.parametrize("bad", ["", "0", "-5MiB", "2 potatoes", "GiB", "1e9", True, 0, -1, 2.5, "9" * 30])
def test_anything_else_names_the_setting(bad: object) -> None:
    """Zero, negatives, unknown units, booleans and nonsense are a ConfigError naming the setting."""
    with pytest.raises(ConfigError, match=r"^STALWART_MODEL_MEMORY: "):
        parse_bytes(bad, "STALWART_MODEL_MEMORY")


def test_sizes_for_people() -> None:
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(4_000_000) == "3.8 MiB"
    assert format_bytes(2 * 1024**3) == "2.0 GiB"
    assert format_bytes(3 * 1024**4) == "3.0 TiB"


def test_the_memory_budget_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """STALWART_MODEL_MEMORY reads the grammar; unset (or empty) is no limit; a bad value
    fails start-up naming the variable."""
    monkeypatch.setenv("STALWART_MODEL_MEMORY", "2GiB")
    assert load_settings().model_memory == 2 * 1024**3
    monkeypatch.setenv("STALWART_MODEL_MEMORY", "")
    assert load_settings().model_memory is None
    monkeypatch.delenv("STALWART_MODEL_MEMORY")
    assert load_settings().model_memory is None
    monkeypatch.setenv("STALWART_MODEL_MEMORY", "lots")
    with pytest.raises(ConfigError, match=r"STALWART_MODEL_MEMORY: .*'lots' is not a size"):
        load_settings()


def test_per_model_limits_fall_back_to_the_server_wide_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """STALWART_MODEL_LIMITS sets a model's own threads, OpenMP threads and calls in flight;
    what it leaves out comes from STALWART_MODEL_THREADS and friends; unknown keys fail."""
    monkeypatch.setenv("STALWART_MODEL_THREADS", "3")
    monkeypatch.setenv("STALWART_MODEL_MAX_CALLS", "100")
    monkeypatch.setenv("STALWART_MODEL_LIMITS", '{"big": {"threads": 1, "omp_threads": 4}}')
    settings = load_settings()
    big = settings.limits_for("big")
    assert (big.threads, big.omp_threads, big.max_calls) == (1, 4, 100)
    other = settings.limits_for("other")
    assert (other.threads, other.omp_threads, other.max_calls) == (3, 1, 100)
    monkeypatch.setenv("STALWART_MODEL_LIMITS", '{"big": {"thread": 1}}')
    with pytest.raises(ConfigError, match="STALWART_MODEL_LIMITS"):
        load_settings()
