"""Sticky canary routing, shadow sampling and the sample-ratio-mismatch test."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from stalwart.errors import ConfigError, RequestError
from stalwart.rollout.routing import (
    MAX_ROUTING_KEY_BYTES,
    ROUTING_KEY_HEADER,
    SRM_THRESHOLD,
    RouteDecision,
    Router,
    assign,
    bucket,
    routing_key,
    sample_ratio_mismatch,
)

N = 100_000
KEYS = [f"customer-{i}".encode() for i in range(N)]


def _within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """``count`` of ``n`` trials is within ``sigmas`` standard deviations of ``n * p``."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# -- stickiness and stability ------------------------------------------------------------


def test_replicas_in_other_processes_assign_alike() -> None:
    """Two replicas (separate interpreters, different hash seeds) route every key alike."""
    keys = [f"user-{i}" for i in range(2_000)]
    code = (
        "import json, sys\n"
        "from stalwart.rollout.routing import Router\n"
        "keys = json.load(sys.stdin)\n"
        "router = Router('rollout-42', 0.3, {'next': 0.2})\n"
        "print(json.dumps([[d.variant, list(d.shadows)] for d in map(router.route, keys)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True, check=True, env=env
    )
    router = Router("rollout-42", 0.3, {"next": 0.2})
    here = [[d.variant, list(d.shadows)] for d in map(router.route, keys)]
    assert json.loads(out.stdout) == here
    assert {variant for variant, _ in here} == {"primary", "canary"}  # the comparison is not vacuous
    assert any(shadows for _, shadows in here)
    assert not all(shadows for _, shadows in here)


def test_the_bucket_is_the_documented_hash() -> None:
    """A key's bucket is BLAKE2b-64 ("stalwart.canary") of the length-prefixed salt and the
    key, top 53 bits over 2**53: what another implementation (or release) must compute to
    route alike."""
    salt, key = "rollout-9", b"customer-3"
    digest = hashlib.blake2b(
        len(salt).to_bytes(4, "big") + salt.encode() + key, digest_size=8, person=b"stalwart.canary"
    ).digest()
    assert bucket(key, salt) == (int.from_bytes(digest, "big") >> 11) / 2**53
    assert bucket(key.decode(), salt) == bucket(key, salt)


@given(st.binary(max_size=64), st.text(min_size=1, max_size=20), st.floats(0, 1), st.floats(0, 1))
def test_keys_only_move_from_primary_to_canary_as_the_weight_rises(key: bytes, salt: str, a: float, b: float) -> None:
    """Raising the weight never sends a canary key back to the primary."""
    low, high = min(a, b), max(a, b)
    if assign(key, salt, low):
        assert assign(key, salt, high)
    assert assign(key, salt, low) == (bucket(key, salt) < low)


@given(st.binary(max_size=64), st.text(min_size=1, max_size=20), st.floats(0, 1))
def test_a_router_assigns_as_assign_does(key: bytes, salt: str, weight: float) -> None:
    """The router built once per state agrees with the one-off function."""
    expected = "canary" if assign(key, salt, weight) else "primary"
    assert Router(salt, weight).route(key).variant == expected


def test_a_rising_weight_keeps_every_earlier_canary_key() -> None:
    """Through a plan's steps (5, 25, 50, 100 %), each step's canary keys include the last's."""
    previous: set[bytes] = set()
    for weight in (0.05, 0.25, 0.5, 1.0):
        router = Router("plan", weight)
        now = {key for key in KEYS[:20_000] if router.route(key).variant == "canary"}
        assert previous <= now
        previous = now
    assert len(previous) == 20_000


@pytest.mark.parametrize("weight", [0.01, 0.05, 0.25, 0.5, 0.9])
def test_the_canary_gets_its_weight_of_keys(weight: float) -> None:
    """Over 100k keys, the canary's share is within binomial bounds of its weight."""
    router = Router("share", weight)
    canary = sum(router.route(key).variant == "canary" for key in KEYS)
    assert _within_binomial(canary, N, weight)


def test_weights_zero_and_one_are_all_or_nothing() -> None:
    """At weight 0 no key reaches the canary; at weight 1 every key does."""
    none, every = Router("ends", 0.0), Router("ends", 1.0)
    assert all(none.route(key) == RouteDecision("primary") for key in KEYS[:5_000])
    assert all(every.route(key) == RouteDecision("canary") for key in KEYS[:5_000])


def test_a_new_salt_reshuffles_the_keys() -> None:
    """A new rollout draws its canary keys afresh: under another salt, the old canary keys
    go to the new canary at its weight, no more (independent), no less."""
    weight = 0.2
    first, second = Router("rollout-1", weight), Router("rollout-2", weight)
    old = [key for key in KEYS if first.route(key).variant == "canary"]
    again = sum(second.route(key).variant == "canary" for key in old)
    assert _within_binomial(again, len(old), weight)


def test_variant_names_are_the_routers() -> None:
    """A rollout may name its variants; the decision carries those names."""
    router = Router("names", 0.5, primary="fraud-v3", canary="fraud-v4")
    assert {router.route(key).variant for key in KEYS[:1_000]} == {"fraud-v3", "fraud-v4"}


# -- shadows ---------------------------------------------------------------------------------


def test_shadows_sample_at_their_rate_independently_of_the_canary() -> None:
    """A shadow's sample is the same share of canary and primary keys (no correlation with
    assignment), and two shadows' samples are independent of each other."""
    router = Router("shadowed", 0.5, {"a": 0.3, "b": 0.6})
    decisions = [router.route(key) for key in KEYS]
    for shadow, rate in (("a", 0.3), ("b", 0.6)):
        sampled = sum(shadow in d.shadows for d in decisions)
        assert _within_binomial(sampled, N, rate)
        table = [
            [sum(1 for d in decisions if d.variant == v and (shadow in d.shadows) == s) for s in (True, False)]
            for v in ("canary", "primary")
        ]
        assert stats.chi2_contingency(table).pvalue > 0.001, table
    pairs = [[sum(1 for d in decisions if ("a" in d.shadows) == x and ("b" in d.shadows) == y) for y in (True, False)] for x in (True, False)]
    assert stats.chi2_contingency(pairs).pvalue > 0.001, pairs


def test_shadow_sampling_is_deterministic_and_ordered() -> None:
    """A key is shadowed or not, every time and in every router of the same state; the
    decision lists shadows in declaration order; rate 1 takes every key, rate 0 none."""
    shadows = {"always": 1.0, "half": 0.5, "never": 0.0}
    first, second = Router("det", 0.1, shadows), Router("det", 0.1, dict(shadows))
    seen = set()
    for key in KEYS[:5_000]:
        decision = first.route(key)
        assert decision == second.route(key) == first.route(key)
        assert decision.shadows[0] == "always"
        assert "never" not in decision.shadows
        seen.add(decision.shadows)
    assert seen == {("always",), ("always", "half")}


def test_canary_assignment_ignores_shadows() -> None:
    """Declaring a shadow moves no key between primary and canary."""
    plain, shadowed = Router("same", 0.3), Router("same", 0.3, {"s": 0.5})
    assert all(plain.route(k).variant == shadowed.route(k).variant for k in KEYS[:10_000])


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"salt": "", "canary_weight": 0.1}, "salt"),
        ({"salt": "s", "canary_weight": 1.5}, "canary_weight"),
        ({"salt": "s", "canary_weight": -0.1}, "canary_weight"),
        ({"salt": "s", "canary_weight": math.nan}, "canary_weight"),
        ({"salt": "s", "canary_weight": True}, "canary_weight"),
        ({"salt": "s", "shadows": {"x": 2.0}}, "shadows['x']"),
        ({"salt": "s", "shadows": {"canary": 0.5}}, "shadows['canary']"),
        ({"salt": "s", "primary": "v", "canary": "v"}, "canary"),
    ],
)
def test_a_bad_rollout_state_fails_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    """A weight, rate, salt or name that makes no sense fails when the state is loaded."""
    with pytest.raises(ConfigError, match=f"^{field}:".replace("[", r"\[")):
        Router(**kwargs)  # type: ignore[arg-type]


# -- routing keys ----------------------------------------------------------------------------


def test_the_routing_key_prefers_the_header_then_the_entity_then_the_request_id() -> None:
    """X-Stalwart-Routing-Key wins; else the entity key; else the request id."""
    entity = {"customer_id": 17}
    assert routing_key(entity, "session-9", "req-1") == b"session-9"
    assert routing_key(entity, None, "req-1") == routing_key(entity, "", "req-1") != b"req-1"
    assert routing_key(None, None, "req-1") == routing_key({}, "", "req-1") == b"req-1"


def test_an_entity_routes_alike_whatever_its_key_order() -> None:
    """The entity key is canonical JSON with sorted keys: field order does not move a user."""
    assert routing_key({"a": 1, "b": "x"}, None, "r1") == routing_key({"b": "x", "a": 1}, None, "r2")
    assert routing_key({"a": 1}, None, "r") != routing_key({"a": 2}, None, "r")


def test_a_long_routing_key_header_is_refused_naming_it() -> None:
    """A client cannot make routing hash an unbounded key: over the limit is a 4xx naming the header."""
    assert routing_key(None, "k" * MAX_ROUTING_KEY_BYTES, "r") == b"k" * MAX_ROUTING_KEY_BYTES
    with pytest.raises(RequestError) as caught:
        routing_key(None, "k" * (MAX_ROUTING_KEY_BYTES + 1), "r")
    assert caught.value.field == ROUTING_KEY_HEADER


# -- sample-ratio mismatch ----------------------------------------------------------------


def test_srm_flags_a_52_48_split_of_100k_against_50_50() -> None:
    """A 2-point imbalance at 100k requests is a mismatch; the statistic is Pearson's."""
    srm = sample_ratio_mismatch({"primary": 52_000, "canary": 48_000}, {"primary": 0.5, "canary": 0.5})
    expected = 2 * (2_000**2 / 50_000)
    assert srm.mismatch
    assert srm.p_value < SRM_THRESHOLD == srm.threshold
    assert srm.chi2 == pytest.approx(expected)
    assert srm.p_value == pytest.approx(stats.chi2.sf(expected, 1))
    assert (srm.total, srm.dof) == (N, 1)


@pytest.mark.parametrize("weight", [0.05, 0.5])
def test_srm_passes_the_split_routing_makes(weight: float) -> None:
    """The counts the router itself produces over 100k keys are no mismatch."""
    router = Router("fair", weight)
    canary = sum(router.route(key).variant == "canary" for key in KEYS)
    srm = sample_ratio_mismatch({"primary": N - canary, "canary": canary}, {"primary": 1 - weight, "canary": weight})
    assert not srm.mismatch
    assert srm.p_value >= SRM_THRESHOLD


def test_srm_with_three_variants_and_a_missing_count() -> None:
    """Counts per variant are tested together; a variant not in the counts had none."""
    weights = {"primary": 0.8, "canary": 0.1, "challenger": 0.1}
    srm = sample_ratio_mismatch({"primary": 8_000, "canary": 1_000}, weights)
    assert srm.mismatch
    assert srm.dof == 2
    fair = sample_ratio_mismatch({"primary": 8_010, "canary": 995, "challenger": 995}, weights)
    assert not fair.mismatch
    assert fair.p_value == pytest.approx(stats.chisquare([8_010, 995, 995], [8_000, 1_000, 1_000]).pvalue)


def test_srm_edge_cases_say_what_the_data_allow() -> None:
    """No requests yet is no mismatch; requests reaching a variant of weight 0 are one."""
    weights = {"primary": 1.0, "canary": 0.0}
    assert not sample_ratio_mismatch({}, weights).mismatch
    assert not sample_ratio_mismatch({"primary": 500}, weights).mismatch
    leaked = sample_ratio_mismatch({"primary": 500, "canary": 1}, weights)
    assert leaked.mismatch
    assert leaked.p_value == 0.0
    assert leaked.chi2 == math.inf


@pytest.mark.parametrize(
    ("observed", "weights", "field"),
    [
        ({"primary": -1, "canary": 5}, {"primary": 0.5, "canary": 0.5}, "observed['primary']"),
        ({"primary": 1.5}, {"primary": 0.5, "canary": 0.5}, "observed['primary']"),
        ({"other": 3}, {"primary": 0.5, "canary": 0.5}, "observed['other']"),
        ({"primary": 3}, {"primary": 0.6, "canary": 0.6}, "weights"),
        ({"primary": 3}, {"primary": 1.2, "canary": -0.2}, "weights['primary']"),
        ({"primary": 3}, {}, "weights"),
    ],
)
def test_srm_refuses_nonsense_naming_the_field(observed: dict[str, int], weights: dict[str, float], field: str) -> None:
    """Negative or fractional counts, unknown variants and weights that are not shares are
    a ConfigError naming what is wrong."""
    with pytest.raises(ConfigError, match="^" + field.replace("[", r"\[") + ":"):
        sample_ratio_mismatch(observed, weights)
