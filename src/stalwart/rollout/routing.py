"""Sticky canary assignment, shadow sampling and the sample-ratio-mismatch test.

**Assignment.** A request's routing key (:func:`routing_key`: the ``X-Stalwart-Routing-Key``
header, else the entity key, else the request id) and the rollout's salt are hashed with
BLAKE2b (8-byte digest, stdlib); the top 53 bits, divided by 2**53, are the key's *bucket*
in [0, 1). The key goes to the canary when its bucket is below the canary's weight. So:

- every replica routes a key alike (the hash is fixed, unlike Python's ``hash()``, which is
  randomised per process);
- as the weight rises, keys only move from primary to canary, never back (the canary set
  at weight ``w`` is a subset of the set at any ``w' >= w``);
- a new rollout (a new salt) reshuffles which keys go first.

**Shadows.** Each shadow samples keys by its own rate with a hash of its own (another
BLAKE2b personalisation, the salt and the shadow's name), so whether a key is shadowed is
deterministic, independent of whether it went to the canary, and independent between
shadows.

**Sample-ratio mismatch** (:func:`sample_ratio_mismatch`): Pearson's chi-squared
goodness-of-fit of the observed counts per variant against the weights (scipy). A
mismatch is flagged when p < 0.001 (:data:`SRM_THRESHOLD`), the level commonly used for
SRM alarms (Fabijan et al., "Diagnosing Sample Ratio Mismatch in Online Controlled
Experiments", KDD 2019; Kohavi et al., "Trustworthy Online Controlled Experiments"): a
check run on every look must rarely cry wolf, and a real SRM at canary volumes gives
p-values far below it.

>>> router = Router("rollout-7", canary_weight=0.25, shadows={"next": 0.1})
>>> router.route(b"customer-17") == router.route("customer-17")
True
>>> assign("customer-17", "rollout-7", 0.0), assign("customer-17", "rollout-7", 1.0)
(False, True)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgspec

from stalwart.errors import ConfigError, RequestError
from stalwart.hashing import canonical_json

__all__ = [
    "MAX_ROUTING_KEY_BYTES",
    "ROUTING_KEY_HEADER",
    "SRM",
    "SRM_THRESHOLD",
    "RouteDecision",
    "Router",
    "assign",
    "bucket",
    "routing_key",
    "sample_ratio_mismatch",
]

ROUTING_KEY_HEADER = "X-Stalwart-Routing-Key"
# A client picks the header's length and every request hashes it: bounded, like X-Request-ID.
MAX_ROUTING_KEY_BYTES = 256
SRM_THRESHOLD = 0.001  # p below this is a sample-ratio mismatch (see the module docstring)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request goes: the variant that answers, and the shadows that also see it."""

    variant: str
    shadows: tuple[str, ...] = ()


class Router:
    """Routes requests for one rollout state: its salt, the canary's weight, the shadows'
    sample rates. Built once per state (a weight change builds a new one); ``route`` is
    the per-request call and costs one hash, plus one per shadow.

    ``shadows`` maps each shadow's name to its sample rate in [0, 1]. Every argument is
    checked here, so a bad state fails when it is loaded, naming the field.
    """

    __slots__ = (
        "_canary", "_canary_at", "_fixed", "_prefix", "_primary", "_shadow_plan", "canary_weight", "salt", "shadows",
    )

    def __init__(
        self,
        salt: str,
        canary_weight: float = 0.0,
        shadows: Mapping[str, float] | None = None,
        *,
        primary: str = "primary",
        canary: str = "canary",
    ) -> None:
        _check_salt(salt)
        self.salt = salt
        self.canary_weight = _check_share(canary_weight, "canary_weight")
        for field, name in (("primary", primary), ("canary", canary)):
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{field}: a variant's name must be a non-empty string, got {name!r}")
        if primary == canary:
            raise ConfigError(f"canary: the canary's name must differ from the primary's ({primary!r})")
        checked: dict[str, float] = {}
        for name, rate in (shadows or {}).items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"shadows: a shadow's name must be a non-empty string, got {name!r}")
            if name in (primary, canary):
                raise ConfigError(f"shadows[{name!r}]: a shadow's name must differ from the primary's and the canary's")
            checked[name] = _check_share(rate, f"shadows[{name!r}]")
        self.shadows: Mapping[str, float] = MappingProxyType(checked)
        # Decided once, here: weights 0 and 1 need no hash (``_canary_at`` None, ``_fixed``
        # answers), nor do shadows at rate 1 (no hash state); shadows at rate 0 are left out.
        self._primary = RouteDecision(primary)
        self._canary = RouteDecision(canary)
        self._fixed = self._canary if self.canary_weight >= 1.0 else self._primary
        self._canary_at = _threshold(self.canary_weight) if 0.0 < self.canary_weight < 1.0 else None
        self._prefix = _prefix(_CANARY, salt)
        self._shadow_plan: tuple[tuple[str, hashlib.blake2b | None, bytes], ...] = tuple(
            (name, None, b"") if rate >= 1.0 else (name, _prefix(_SHADOW, salt, name), _threshold(rate))
            for name, rate in checked.items()
            if rate > 0.0
        )

    def route(self, key: bytes | str) -> RouteDecision:
        """The variant for ``key`` (the same on every replica, for as long as this state
        holds) and the shadows, in declaration order, that sample it."""
        if isinstance(key, str):
            key = key.encode("utf-8", "surrogatepass")
        at = self._canary_at
        if at is None:
            decision = self._fixed
        else:
            h = self._prefix.copy()
            h.update(key)
            decision = self._canary if h.digest() < at else self._primary
        if not self._shadow_plan:
            return decision
        shadows = []
        for name, prefix, threshold in self._shadow_plan:
            if prefix is not None:
                h = prefix.copy()
                h.update(key)
                if h.digest() >= threshold:
                    continue
            shadows.append(name)
        return RouteDecision(decision.variant, tuple(shadows)) if shadows else decision

    def __repr__(self) -> str:
        return f"Router(salt={self.salt!r}, canary_weight={self.canary_weight!r}, shadows={dict(self.shadows)!r})"


def bucket(key: bytes | str, salt: str) -> float:
    """``key``'s bucket in [0, 1) under ``salt``: the canary takes the keys below its weight."""
    h = _prefix(_CANARY, salt).copy()
    h.update(key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key)
    return (int.from_bytes(h.digest(), "big") >> 11) / _SCALE


def assign(key: bytes | str, salt: str, canary_weight: float) -> bool:
    """Whether ``key`` goes to the canary (True) or the primary, at this weight and salt.

    The same answer as ``Router(salt, canary_weight).route(key)``; a router built once is
    cheaper per call (it hashes the salt once).
    """
    _check_salt(salt)
    return bucket(key, salt) < _check_share(canary_weight, "canary_weight")


def routing_key(entity: Mapping[str, Any] | None, header: str | None, request_id: str) -> bytes:
    """The bytes a request is routed by: the ``X-Stalwart-Routing-Key`` header if given
    (an empty one counts as absent), else the entity key as canonical JSON (sorted keys,
    so ``{"a": 1, "b": 2}`` routes as ``{"b": 2, "a": 1}``), else the request id.

    A header over :data:`MAX_ROUTING_KEY_BYTES` is a :class:`RequestError` naming it.
    """
    if header:
        raw = header.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_ROUTING_KEY_BYTES:
            raise RequestError(
                f"{ROUTING_KEY_HEADER} is {len(raw)} bytes, over the limit of {MAX_ROUTING_KEY_BYTES}; "
                "send a shorter key (a user or session id, or a hash of one)",
                field=ROUTING_KEY_HEADER,
            )
        return raw
    if entity:
        try:
            return canonical_json(entity if isinstance(entity, dict) else dict(entity))
        except (TypeError, msgspec.EncodeError) as exc:
            raise RequestError(
                f"the entity key cannot be used to route the request ({exc}); send keys as numbers or strings",
                field="entities",
            ) from exc
    return request_id.encode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class SRM:
    """The sample-ratio-mismatch test of observed counts per variant against the weights."""

    chi2: float  # Pearson's statistic (inf when a variant of weight 0 was observed)
    p_value: float
    mismatch: bool  # p_value < threshold
    threshold: float
    total: int  # requests counted
    dof: int  # degrees of freedom: variants of positive weight, minus one


def sample_ratio_mismatch(
    observed: Mapping[str, int], weights: Mapping[str, float], *, threshold: float = SRM_THRESHOLD
) -> SRM:
    """Whether the observed split of requests between variants is credibly not the
    configured one (a sample-ratio mismatch: a routing bug, a variant that drops or
    duplicates requests, bots sticking to one side), by a chi-squared goodness-of-fit test.

    ``observed`` counts requests per variant; a variant in ``weights`` and not in
    ``observed`` counted none. ``weights`` gives each variant's share in [0, 1], summing
    to 1 (within 1e-6; they are renormalised). Counts of a variant with weight 0 are a mismatch outright. With no requests, or
    a single variant of positive weight, there is nothing to test: p is 1. The chi-squared
    approximation wants an expected count of about 5 or more per variant; below that the
    p-value is only approximate (the controller's minimum requests per step is far above).

    Negative or non-integer counts, unknown variants, weights outside [0, 1] or not summing
    to 1 are a :class:`ConfigError` naming the field.
    """
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold: must be a number strictly between 0 and 1, got {threshold!r}")
    if not weights:
        raise ConfigError("weights: give each variant's share (e.g. {'primary': 0.9, 'canary': 0.1})")
    shares = {name: _check_share(share, f"weights[{name!r}]") for name, share in weights.items()}
    total_share = math.fsum(shares.values())
    if abs(total_share - 1.0) > 1e-6:
        raise ConfigError(f"weights: the shares must sum to 1, they sum to {total_share!r}")
    counts: dict[str, int] = dict.fromkeys(shares, 0)
    for name, count in observed.items():
        if name not in shares:
            raise ConfigError(f"observed[{name!r}]: not a variant in weights ({', '.join(map(repr, shares))})")
        if not isinstance(count, int) or isinstance(count, bool):
            raise ConfigError(f"observed[{name!r}]: a count must be an integer, got {count!r}")
        if count < 0:
            raise ConfigError(f"observed[{name!r}]: a count cannot be negative, got {count}")
        counts[name] = count
    total = sum(counts.values())
    tested = [name for name, share in shares.items() if share > 0.0]
    dof = len(tested) - 1
    if any(counts[name] for name, share in shares.items() if share == 0.0):
        return SRM(math.inf, 0.0, True, threshold, total, dof)
    if total == 0 or dof == 0:
        return SRM(0.0, 1.0, False, threshold, total, dof)
    # scipy.stats costs a second or more to import: only the analysis pays it, never a
    # process that merely routes.
    from scipy import stats

    expected = [shares[name] / total_share * total for name in tested]
    result = stats.chisquare([counts[name] for name in tested], expected)
    chi2, p_value = float(result.statistic), float(result.pvalue)
    return SRM(chi2, p_value, p_value < threshold, threshold, total, dof)


# BLAKE2b personalisations (at most 16 bytes): the canary's hash and the shadows' are
# different functions, so sampling a shadow says nothing about canary assignment.
_CANARY = b"stalwart.canary"
_SHADOW = b"stalwart.shadow"
_BITS = 53  # a bucket is the digest's top 53 bits: exact as a float, so bucket < weight is exact
_SCALE = float(1 << _BITS)


def _threshold(share: float) -> bytes:
    # For 0 < share < 1: with d the digest as a 64-bit integer and b = d >> 11 its top 53
    # bits, bucket < share  <=>  b < share * 2**53  <=>  b < T = ceil(share * 2**53)
    # <=>  d < T << 11 (< 2**64, as T < 2**53). Digests compare as big-endian integers when
    # compared as bytes, which skips an int conversion per hash.
    return (math.ceil(share * _SCALE) << 11).to_bytes(8, "big")


def _prefix(person: bytes, *parts: str) -> hashlib.blake2b:
    # Each part length-prefixed, so ("ab", "c") and ("a", "bc") hash differently; the
    # request's key is appended to a copy of this state.
    h = hashlib.blake2b(digest_size=8, person=person)
    for part in parts:
        raw = part.encode("utf-8", "surrogatepass")
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h


def _check_salt(salt: str) -> None:
    if not isinstance(salt, str) or not salt:
        raise ConfigError(f"salt: a rollout's salt must be a non-empty string, got {salt!r}")


def _check_share(value: float, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{field}: must be a number from 0 to 1, got {value!r}")
    return float(value)
