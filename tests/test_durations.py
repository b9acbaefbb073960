"""One duration grammar for every setting: features, deployments, caches, resilience."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import BaseModel, Field, ValidationError

from stalwart.durations import NS, Seconds, format_duration, parse_ns, parse_seconds
from stalwart.errors import ConfigError
from stalwart.project import Deployment, Entity, FeatureSet, Latest, SqlSource, Window
from stalwart.resilience import TimeoutConfig


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("1d", 86_400.0),
        ("1w", 604_800.0),
        ("5", 5.0),
        ("0.5", 0.5),
        ("1e-3", 0.001),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        ("1d 12h", 129_600.0),
        ("10us", 1e-5),
        (" 30s ", 30.0),
        (0.25, 0.25),
        (3, 3.0),
        (dt.timedelta(minutes=2), 120.0),
    ],
)
def test_every_spelling_is_the_same_duration_in_both_views(text: object, seconds: float) -> None:
    """A string, a number of seconds or a timedelta means the same span in float seconds
    (resilience, caches) and in exact nanoseconds (features)."""
    assert parse_seconds(text, "setting") == pytest.approx(seconds)
    assert parse_ns(text, "setting") == round(seconds * NS)  # type: ignore[arg-type]


def test_nanoseconds_are_exact() -> None:
    """No float rounding between a string and its nanoseconds."""
    assert parse_ns("0.1s", "w") == 100_000_000
    assert parse_ns("1h30m", "w") == 5400 * NS


@pytest.mark.parametrize("bad", ["-5s", -1, -0.5, "abc", "5x", "", "s", "1h-30m", "5 parsecs", True, None, float("nan"), float("inf"), [1]])
def test_garbage_and_negatives_are_refused_naming_the_setting(bad: object) -> None:
    """A bad duration is a ConfigError whose message starts with the setting's name."""
    with pytest.raises(ConfigError, match=r"^cache ttl: "):
        parse_seconds(bad, "cache ttl")
    with pytest.raises(ConfigError, match=r"^window: "):
        parse_ns(bad, "window")  # type: ignore[arg-type]


def test_zero_is_a_duration_unless_the_setting_needs_more() -> None:
    """Zero passes the grammar; a window or a max age (positive) refuses it."""
    assert parse_seconds(0, "wait") == 0.0
    assert parse_ns("0s", "wait", positive=False) == 0
    with pytest.raises(ConfigError, match="longer than zero"):
        parse_ns("0s", "window")
    with pytest.raises(ConfigError, match="longer than zero"):
        parse_seconds("0", "last_good", positive=True)


def test_format_is_the_shortest_exact_spelling() -> None:
    """FeatureSet versions hash this spelling: "1d", "24h" and 86400 are one definition."""
    assert {format_duration(parse_ns(v, "w")) for v in ("1d", "24h", 86_400, "1440m")} == {"1d"}
    assert format_duration(parse_ns("90s", "w")) == "90s"
    assert format_duration(parse_ns("1500ms", "w")) == "1500ms"


def test_pydantic_fields_use_the_grammar_and_name_the_field() -> None:
    """A Seconds field takes every spelling; a bad one is a validation error at that field."""

    class Policy(BaseModel):
        ttl: Seconds = Field(gt=0)
        wait: Seconds | None = None

    assert Policy.model_validate({"ttl": "2min", "wait": "1h30m"}) == Policy(ttl=120.0, wait=5400.0)
    assert Policy.model_validate({"ttl": "5"}).wait is None
    with pytest.raises(ValidationError) as info:
        Policy.model_validate({"ttl": "-1s"})
    assert info.value.errors()[0]["loc"] == ("ttl",)
    assert "negative" in info.value.errors()[0]["msg"]
    assert TimeoutConfig.model_validate({"timeout_duration": "2min"}).timeout_duration == 120.0


def test_declarations_accept_the_same_strings() -> None:
    """Deployment(last_good="1d") works like Window("1d"), and both refuse garbage at declaration."""
    assert Deployment("fraud", model="fraud", last_good="1d").last_good == "1d"
    Deployment("fraud", model="fraud", last_good="2min")
    with pytest.raises(ConfigError, match=r"deployment 'fraud' last_good: 'soon'"):
        Deployment("fraud", model="fraud", last_good="soon")
    card = Entity("card", keys=["card_id"])
    tx = SqlSource("tx", table="tx", entity=card, timestamp="ts")
    fs = FeatureSet("a", entity=card, source=tx, features=[Window("n", agg="count", window="1h30m"), Latest("x", column="x", max_age="5")])
    assert fs.definition()["features"][0]["window"] == "90m"
    with pytest.raises(ConfigError, match=r"feature 'n' window: '-1d' is negative"):
        Window("n", agg="count", window="-1d")
    with pytest.raises(ConfigError, match=r"feature 'x' max_age"):
        Latest("x", column="x", max_age="often")
