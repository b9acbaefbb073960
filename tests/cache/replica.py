"""A replica in its own process, for the two-process invalidation test.

Run ``python -m tests.cache.replica <redis url> <namespace> <sqlite file>``; it reads one
JSON command per line on stdin and answers one JSON line on stdout:
``{"op": "get", "key": 1}`` reads through the cache (the source is a SQLite table shared
by every replica), ``{"op": "write", "key": 1, "value": 2.5}`` writes the row and then
invalidates it, as ``stalwart.features.write`` will.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from typing import Any

from stalwart.cache import CachePolicy, FeatureCache, RedisTier
from stalwart.cache.keys import EntityKey
from stalwart.cache.tier import Row
from stalwart.monitoring.logs import configure_logging


async def main(url: str, namespace: str, path: str) -> None:
    configure_logging("json", "warning", sys.stderr)  # stdout carries the answers
    db = sqlite3.connect(path, isolation_level=None)
    cache = FeatureCache(redis=RedisTier.from_url(url, namespace=namespace), namespace=namespace)
    await cache.start()
    if cache.bus is None or not await cache.bus.wait_connected(10):
        raise SystemExit("replica could not subscribe")
    fraud = cache.bind("fraud", "v1", CachePolicy(ttl=300))
    loads = 0

    async def load(keys: list[EntityKey]) -> dict[EntityKey, Row | None]:
        nonlocal loads
        loads += 1
        out: dict[EntityKey, Row | None] = {}
        for key in keys:
            row = db.execute("SELECT amount FROM accounts WHERE id = ?", key).fetchone()
            out[key] = None if row is None else {"amount": row[0]}
        return out

    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command: dict[str, Any] = json.loads(line)
            if command["op"] == "get":
                result = await fraud.get_many([(command["key"],)], load)
                row = result.rows[(command["key"],)]
                answer = {"row": row, "loads": loads, "memory_hits": result.memory_hits, "redis_hits": result.redis_hits}
            else:
                db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?)", (command["key"], command["value"]))
                answer = {"published": await cache.invalidate("fraud", [(command["key"],)])}
            print(json.dumps(answer), flush=True)
    finally:
        await cache.aclose()
        db.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
