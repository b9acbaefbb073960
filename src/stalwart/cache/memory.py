"""The in-process cache tier: a map bounded by entries and bytes, evicting with SIEVE."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stalwart.cache.keys import KeySpace
from stalwart.cache.tier import Entry
from stalwart.errors import ConfigError

__all__ = ["MemoryTier", "estimate_bytes"]


class _Node:
    __slots__ = ("entry", "key", "newer", "older", "size", "visited")

    def __init__(self, key: str, entry: Entry, size: int) -> None:
        self.key = key
        self.entry = entry
        self.size = size
        self.visited = False
        self.newer: _Node | None = None
        self.older: _Node | None = None


_NODE_BYTES = 56 + 72 + 56  # the node, the entry struct, the dict slot
_SCALAR_BYTES = 32  # an int or float object and its pointer


def estimate_bytes(key: str, entry: Entry) -> int:
    """A cheap estimate of the memory an entry holds (column names are shared, not counted)."""
    size = _NODE_BYTES + 49 + len(key)
    row = entry.row
    if row:
        size += sys.getsizeof(row)
        for value in row.values():
            size += 49 + len(value) if type(value) is str else _SCALAR_BYTES
    return size


class MemoryTier:
    """An in-process map bounded by entries *and* by bytes, evicting with SIEVE.

    SIEVE (Zhang et al., NSDI '24) keeps LRU's simplicity with a better hit ratio on skewed
    traffic: a hit only sets a bit (no reordering, so hits are cheap), and eviction sweeps a
    hand from old to new, sparing and clearing visited entries, evicting the first unvisited
    (or the first past its ``usable_until``). ``benchmarks/bench_cache.py`` compares it with
    LRU on Zipf traffic.

    >>> tier = MemoryTier(max_entries=2)
    >>> space = KeySpace("doc", "fraud", "v1")
    >>> tier.put_many(space, [("1", Entry({"x": 1}, 0.0, 9e9, 9e9, 0.0))], now=0.0)
    >>> tier.get_many([space.key("1")], now=1.0)[0].row
    {'x': 1}
    """

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ConfigError("the in-process cache needs max_entries >= 1 and max_bytes >= 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._nodes: dict[str, _Node] = {}
        self._head: _Node | None = None  # newest
        self._tail: _Node | None = None  # oldest
        self._hand: _Node | None = None
        self._prefixes: dict[str, set[str]] = {}  # feature set -> key prefixes (one per version)

    def __len__(self) -> int:
        return len(self._nodes)

    def get_many(self, keys: Sequence[str], now: float) -> list[Entry | None]:
        """Entries still usable at ``now`` (fresh or within their staleness bound)."""
        nodes = self._nodes
        out: list[Entry | None] = []
        for key in keys:
            node = nodes.get(key)
            if node is None:
                out.append(None)
            elif node.entry.usable_until <= now:
                self._unlink(node)
                out.append(None)
            else:
                node.visited = True
                out.append(node.entry)
        return out

    def put_many(self, space: KeySpace, items: Sequence[tuple[str, Entry]], now: float) -> None:
        """Store entries of one FeatureSet version (entity part -> entry)."""
        prefixes = self._prefixes.get(space.feature_set)
        if prefixes is None:
            prefixes = self._prefixes[space.feature_set] = set()
        prefixes.add(space.prefix)
        for entity, entry in items:
            if entry.usable_until <= now:
                continue
            key = space.prefix + entity
            size = estimate_bytes(key, entry)
            if size > self.max_bytes:
                continue
            node = self._nodes.get(key)
            if node is not None:
                self.bytes += size - node.size
                node.entry = entry
                node.size = size
            else:
                node = _Node(key, entry, size)
                self._nodes[key] = node
                self.bytes += size
                node.older = self._head
                if self._head is not None:
                    self._head.newer = node
                self._head = node
                if self._tail is None:
                    self._tail = node
            while len(self._nodes) > self.max_entries or self.bytes > self.max_bytes:
                self._evict(node, now)

    def delete(self, feature_set: str, entities: Sequence[str]) -> int:
        """Drop these entities of a FeatureSet, in every version; returns how many were held."""
        dropped = 0
        for prefix in self._prefixes.get(feature_set, ()):
            for entity in entities:
                node = self._nodes.get(prefix + entity)
                if node is not None:
                    self._unlink(node)
                    dropped += 1
        return dropped

    def clear(self, feature_set: str | None = None) -> int:
        """Drop one FeatureSet (every version), or everything; returns how many were held."""
        if feature_set is None:
            dropped = len(self._nodes)
            self._nodes.clear()
            self._head = self._tail = self._hand = None
            self.bytes = 0
            self._prefixes.clear()
            return dropped
        prefixes = tuple(self._prefixes.pop(feature_set, ()))
        if not prefixes:
            return 0
        doomed = [node for key, node in self._nodes.items() if key.startswith(prefixes)]
        for node in doomed:
            self._unlink(node)
        return len(doomed)

    def _evict(self, keep: _Node, now: float) -> None:
        node = self._hand or self._tail
        # Spare visited entries (once), except dead ones: past usable_until they only hold space.
        while node is not None and ((node.visited and node.entry.usable_until > now) or node is keep):
            node.visited = False
            node = node.newer or self._tail
            if node is keep and len(self._nodes) == 1:
                return
        if node is None:
            return
        self._hand = node.newer
        self._unlink(node)
        self.evictions += 1

    def _unlink(self, node: _Node) -> None:
        if self._hand is node:
            self._hand = node.newer
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._head = node.older
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._tail = node.newer
        node.newer = node.older = None
        del self._nodes[node.key]
        self.bytes -= node.size
