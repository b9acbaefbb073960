"""Which versions the memory budget unloads, and what it expects a version to take."""

from __future__ import annotations

import numpy as np

from stalwart.registry import Registry
from stalwart.serving.residency import UNMEASURED_FACTOR, Candidate, Usage, choose_victims, estimate
from tests import models

MB = 1_000_000


def _candidate(name: str, charge: int, last_used: float, *, in_flight: int = 0, protected: bool = False) -> Candidate:
    usage = Usage(max_calls=10, last_used=last_used, in_flight=in_flight)
    return Candidate((name, 1), charge, usage, protected)


def _names(victims: list[Candidate] | None) -> list[str] | None:
    return None if victims is None else [v.key[0] for v in victims]


def test_nothing_is_unloaded_while_it_fits() -> None:
    assert choose_victims(4 * MB, 10 * MB, 20 * MB, [_candidate("a", 10 * MB, 1.0)]) == []


def test_the_least_recently_used_idle_versions_go_first_and_no_more_than_needed() -> None:
    """Idle versions go oldest use first, until the new one fits; the others stay."""
    loaded = [_candidate("a", 4 * MB, 3.0), _candidate("b", 4 * MB, 1.0), _candidate("c", 4 * MB, 2.0), _candidate("d", 4 * MB, 4.0)]
    assert _names(choose_victims(4 * MB, 16 * MB, 16 * MB, loaded)) == ["b"]
    assert _names(choose_victims(8 * MB, 16 * MB, 16 * MB, loaded)) == ["b", "c"]


def test_a_version_serving_requests_is_never_unloaded() -> None:
    """A version with calls in flight is not a candidate, however old its last use."""
    loaded = [_candidate("busy", 4 * MB, 0.0, in_flight=1), _candidate("idle", 4 * MB, 5.0)]
    assert _names(choose_victims(4 * MB, 8 * MB, 8 * MB, loaded)) == ["idle"]
    # Room only if the busy one went: refused, nothing unloaded for nothing.
    assert choose_victims(8 * MB, 8 * MB, 8 * MB, loaded) is None


def test_routed_and_latest_versions_go_only_after_every_other() -> None:
    """Versions a deployment routes to (or a model's latest) are unloaded last, even when
    used longer ago than the rest."""
    loaded = [_candidate("primary", 4 * MB, 0.0, protected=True), _candidate("other", 4 * MB, 9.0), _candidate("old", 4 * MB, 5.0)]
    assert _names(choose_victims(8 * MB, 12 * MB, 12 * MB, loaded)) == ["old", "other"]
    assert _names(choose_victims(12 * MB, 12 * MB, 12 * MB, loaded)) == ["old", "other", "primary"]


def test_the_expected_memory_is_the_last_measurement_else_the_artifact_times_the_factor(registry: Registry) -> None:
    """Before its first load a version is expected to take its artifact's size times
    UNMEASURED_FACTOR; once a server measured it, the measurement."""
    mv = registry.register("ballast", models.Ballast(100_000, 1.0), sample=np.ones((2, 3)), trust_pickle=True)
    unmeasured = estimate(mv, registry.memory.get("ballast", 1))
    assert unmeasured.bytes == int(mv.artifact_size * UNMEASURED_FACTOR)
    assert not unmeasured.measured
    assert "estimated as 2 x its artifact" in unmeasured.describe()
    registry.memory.record("ballast", 1, 812_345, replica="host-1")
    measured = estimate(mv, registry.memory.get("ballast", 1))
    assert (measured.bytes, measured.measured) == (812_345, True)
    assert measured.describe() == "about 793.3 KiB, as last measured"
