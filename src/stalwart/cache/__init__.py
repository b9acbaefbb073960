"""The feature value cache: in-process and Redis tiers, keys versioned by the FeatureSet
definition, invalidation across replicas, request coalescing and stale-if-error.

Importing this package loads no redis; the Redis tier imports it when built and names the
extra to install when missing. Invalidation by PostgreSQL NOTIFY is
:mod:`stalwart.features.notify` (it binds sources' tables to cached FeatureSets).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "DEFAULT_STALE_ON",
    "CacheMetrics",
    "CachePolicy",
    "CacheResult",
    "CacheTier",
    "EntityKey",
    "Entry",
    "Expiring",
    "FeatureCache",
    "FeatureSetCache",
    "Invalidation",
    "Loader",
    "MemoryTier",
    "RedisTier",
    "Row",
    "Snapshot",
    "encode_entity",
]

_EXPORTS: dict[str, str] = {
    "DEFAULT_STALE_ON": "stalwart.cache.cache",
    "CacheMetrics": "stalwart.cache.metrics",
    "CachePolicy": "stalwart.cache.cache",
    "CacheResult": "stalwart.cache.cache",
    "CacheTier": "stalwart.cache.tier",
    "EntityKey": "stalwart.cache.keys",
    "Entry": "stalwart.cache.tier",
    "Expiring": "stalwart.cache.cache",
    "FeatureCache": "stalwart.cache.cache",
    "FeatureSetCache": "stalwart.cache.cache",
    "Invalidation": "stalwart.cache.invalidation",
    "Loader": "stalwart.cache.cache",
    "MemoryTier": "stalwart.cache.memory",
    "RedisTier": "stalwart.cache.redis",
    "Row": "stalwart.cache.tier",
    "Snapshot": "stalwart.cache.tier",
    "encode_entity": "stalwart.cache.keys",
}

if TYPE_CHECKING:
    from stalwart.cache.cache import (
        DEFAULT_STALE_ON,
        CachePolicy,
        CacheResult,
        Expiring,
        FeatureCache,
        FeatureSetCache,
        Loader,
    )
    from stalwart.cache.invalidation import Invalidation
    from stalwart.cache.keys import EntityKey, encode_entity
    from stalwart.cache.memory import MemoryTier
    from stalwart.cache.metrics import CacheMetrics
    from stalwart.cache.redis import RedisTier
    from stalwart.cache.tier import CacheTier, Entry, Row, Snapshot


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stalwart.cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
