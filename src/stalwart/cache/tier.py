"""The cache tier protocol and what every tier stores.

An :class:`Entry` is one entity's row (or ``None``: the source has no row for it) with
the times that govern it: ``fresh_until`` (the TTL; a hit before it) and ``usable_until``
(TTL plus the policy's maximum staleness; after ``fresh_until`` the entry is only served
when the source fails). Every tier keeps an entry until ``usable_until``.

The in-process tier is always a :class:`~stalwart.cache.memory.MemoryTier` and is called
synchronously: an ``await`` per hit would cost as much as the hit itself. The shared tier
is anything that follows :class:`CacheTier`; :class:`~stalwart.cache.redis.RedisTier` is
the one Stalwart ships. One backend per module, as feast keeps its online stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from stalwart.cache.keys import KeySpace

__all__ = ["CacheTier", "Entry", "Row", "Snapshot"]

Row = dict[str, Any]
"""One entity's values: column or feature name -> int, float, str, bool or None."""

class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One cached value and its clock (wall-clock seconds, shared by every replica)."""

    row: Row | None
    computed_at: float
    fresh_until: float
    usable_until: float
    delta: float
    """Seconds the load took: XFetch refreshes expensive values earlier."""


@dataclass(slots=True)
class Snapshot:
    """What a tier held for some entities when read: ``entries`` aligned with the entities,
    and ``token``, opaque, which :meth:`CacheTier.set_many` uses to refuse a write-back when
    an invalidation happened after the read."""

    entries: list[Entry | None]
    token: object


class CacheTier(Protocol):
    """The shared cache tier: entries under :class:`KeySpace` keys, seen by every replica.

    Every method raises :class:`~stalwart.errors.CacheUnavailable` (and nothing else) when
    the tier cannot be used; the cache then carries on without it.
    """

    name: str

    async def get_many(self, space: KeySpace, entities: Sequence[str]) -> Snapshot:
        """Usable entries for these entities (None where absent, expired or invalidated)."""
        ...

    async def set_many(
        self, space: KeySpace, items: Sequence[tuple[str, Entry]], seen: Snapshot | None = None
    ) -> list[bool]:
        """Store entries; with ``seen`` (from :meth:`get_many` of the same entities) store
        each only if it was not invalidated since. Returns, per item, whether it was stored."""
        ...

    async def delete(
        self, feature_set: str, entities: Sequence[str], *, announce: bytes | None = None
    ) -> None:
        """Invalidate these entities in every version of a FeatureSet, then publish
        ``announce`` to every replica (atomically with the deletion when possible)."""
        ...

    async def clear(self, feature_set: str | None = None, *, announce: bytes | None = None) -> None:
        """Invalidate a whole FeatureSet (every version), or the whole namespace, then publish."""
        ...
