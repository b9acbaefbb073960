"""The cache's public surface and its import cost."""

from __future__ import annotations

import subprocess
import sys

import stalwart.cache

EXPECTED = {
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
}


def test_the_public_names_change_only_on_purpose() -> None:
    """What users import from stalwart.cache is a deliberate list, and every name resolves."""
    assert set(stalwart.cache.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(stalwart.cache, name) is not None


def test_using_the_in_process_cache_loads_neither_redis_nor_psycopg() -> None:
    """The embedded default (no Redis) does not import the Redis or PostgreSQL drivers."""
    code = (
        "import sys, asyncio\n"
        "from stalwart.cache import FeatureCache\n"
        "async def load(keys): return {k: {'x': 1} for k in keys}\n"
        "asyncio.run(FeatureCache().bind('f', 'v').get_many([(1,)], load))\n"
        "print(sorted(m for m in ('redis', 'psycopg') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_redis_names_the_extra_to_install() -> None:
    """Without the redis package, building the Redis tier says which extra to install."""
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "from stalwart.cache import RedisTier\n"
        "from stalwart.errors import MissingExtraError\n"
        "try:\n"
        "    RedisTier.from_url('redis://127.0.0.1:6379/0')\n"
        "except MissingExtraError as exc:\n"
        "    print(exc.extra, isinstance(exc, ImportError))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "redis True"
