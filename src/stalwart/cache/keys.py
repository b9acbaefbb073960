"""Cache keys: namespace, FeatureSet name, FeatureSet version and entity key, as one string.

A value key reads ``<namespace>:f1:<feature set>:<version>:<entity>``::

    >>> space = KeySpace("stalwart", "fraud", "3f9a0c")
    >>> space.key(encode_entity((17,)))
    'stalwart:f1:fraud:3f9a0c:17'
    >>> encode_entity(("card", 3))
    "'card,3"

The version is part of every key, so a changed FeatureSet definition (a new version hash)
can never read a value computed by the old code. ``f1`` is the entry format: a release
that changes the stored layout bumps it, and old and new replicas then use disjoint keys
during a rolling upgrade instead of misreading each other's values.

Entity keys are encoded so that two keys equal in Python get the same cache key (``(1,)``,
``(1.0,)`` and ``(True,)`` all become ``1``, as they are one dict key), and keys that differ
never collide: strings carry a ``'`` prefix and percent-escape ``%``, ``,`` and control
characters, so ``("a,b",)`` and ``("a", "b")`` stay apart. Names and versions are escaped to
``[A-Za-z0-9_.-]`` so glob patterns over a prefix (``SCAN MATCH``) mean what they say.
"""

from __future__ import annotations

import math
import re
from numbers import Integral
from typing import Final

from stalwart.errors import ConfigError, RequestError

__all__ = [
    "EntityKey",
    "KeySpace",
    "Scalar",
    "channel_name",
    "check_namespace",
    "encode_entity",
    "epoch_key",
    "escape_name",
    "namespace_pattern",
    "set_prefix",
    "versions_key",
]

Scalar = int | float | str | bool | None
EntityKey = tuple[Scalar, ...]

_FORMAT: Final = "f1"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_UNSAFE_TEXT = re.compile(r"[%,\x00-\x20\x7f]")


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode())


def escape_name(name: str) -> str:
    """A FeatureSet name or version made safe for a key segment (``:`` and globs escaped)."""
    if not name:
        raise ConfigError("a cache key segment cannot be empty; give the FeatureSet a name")
    return _UNSAFE_NAME.sub(_percent, name)


def _part(value: object) -> str:
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str:
        text: str = value  # type: ignore[assignment]
        return "'" + (_UNSAFE_TEXT.sub(_percent, text) if _UNSAFE_TEXT.search(text) else text)
    if value is None:
        return "~"
    if isinstance(value, Integral):  # bool and numpy integers
        return str(int(value))
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        if math.isnan(value):
            return "nan"
        return repr(float(value))
    raise RequestError(
        f"entity key part {value!r} has type {kind.__name__}; entity keys are tuples of "
        f"int, float, str, bool or None",
        field="entity",
    )


def encode_entity(key: EntityKey) -> str:
    """The entity part of a cache key: stable across processes and releases, and compact."""
    if len(key) == 1:
        return _part(key[0])
    return ",".join(map(_part, key))


class KeySpace:
    """Where one FeatureSet version's values live: the key prefix shared by its entities."""

    __slots__ = (
        "epoch_key",
        "feature_set",
        "namespace",
        "prefix",
        "set_prefix",
        "version",
        "version_segment",
        "versions_key",
    )

    def __init__(self, namespace: str, feature_set: str, version: str) -> None:
        check_namespace(namespace)
        self.namespace = namespace
        self.feature_set = feature_set
        self.version = version
        self.version_segment = escape_name(version)
        self.set_prefix = set_prefix(namespace, feature_set)
        self.prefix = f"{self.set_prefix}{self.version_segment}:"
        self.epoch_key = epoch_key(namespace, feature_set)
        self.versions_key = versions_key(namespace, feature_set)

    def key(self, entity: str) -> str:
        """The full key of one encoded entity."""
        return self.prefix + entity

    def __repr__(self) -> str:
        return f"KeySpace({self.namespace!r}, {self.feature_set!r}, {self.version!r})"


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(
            f"cache namespace {namespace!r} must be 1-64 characters of A-Z, a-z, 0-9, '_', "
            f"'.' or '-'"
        )
    return namespace


def set_prefix(namespace: str, feature_set: str) -> str:
    """The prefix of every value key of a FeatureSet, whatever the version."""
    return f"{namespace}:{_FORMAT}:{escape_name(feature_set)}:"


def epoch_key(namespace: str, feature_set: str) -> str:
    """The counter bumped when a whole FeatureSet (every version) is invalidated."""
    return f"{namespace}:e1:{escape_name(feature_set)}"


def versions_key(namespace: str, feature_set: str) -> str:
    """The sorted set of a FeatureSet's versions that have values in Redis."""
    return f"{namespace}:v1:{escape_name(feature_set)}"


def channel_name(namespace: str) -> str:
    """The pub/sub channel every replica of a namespace listens on for invalidations."""
    return f"{namespace}:invalidate"


def namespace_pattern(namespace: str) -> str:
    """A ``SCAN MATCH`` pattern for every key of the namespace."""
    return f"{check_namespace(namespace)}:*"
