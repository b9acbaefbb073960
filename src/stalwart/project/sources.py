"""Sources: where raw rows live. Declarations only: reading them is
:mod:`stalwart.features.readers`, writing to them :mod:`stalwart.features.writes`.

>>> card = Entity("card", keys=["card_id"])
>>> tx = SqlSource("transactions", table="transactions", entity=card, timestamp="ts")
>>> txn = RequestSource("txn", fields={"amount": "float"})
>>> txn.amount
RequestField(source='txn', name='amount', type='float')
"""

from __future__ import annotations

import hashlib
import inspect
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stalwart.errors import ConfigError
from stalwart.project.entities import Entity, check_identifier

if TYPE_CHECKING:
    from stalwart.project.feature_sets import FeatureSet

__all__ = [
    "FIELD_DTYPES",
    "CallableSource",
    "FileSource",
    "RequestField",
    "RequestSource",
    "Source",
    "SqlSource",
    "code_identity",
    "declare_feature_set",
    "is_dataset_path",
]

FIELD_DTYPES: dict[str, np.dtype[Any]] = {
    "float": np.dtype(np.float64),
    "int": np.dtype(np.int64),
    "str": np.dtype(object),
    "bool": np.dtype(np.bool_),
}
"""Request field types and the numpy dtype of their columns."""


# Source -> the FeatureSets declared over it in this process (weakly: a set that is no
# longer referenced anywhere has no cached values worth invalidating).
_SETS_BY_SOURCE: weakref.WeakKeyDictionary[Source, weakref.WeakSet[FeatureSet]] = weakref.WeakKeyDictionary()


class Source:
    """Where raw rows live. Each row carries the entity key(s) and an event timestamp."""

    name: str
    entity: Entity | None
    timestamp: str | None

    def describe(self) -> dict[str, Any]:
        """What identifies the source's data, for FeatureSet versions."""
        raise NotImplementedError

    def feature_sets(self) -> list[FeatureSet]:
        """The FeatureSets declared over this source object in this process, by name: the
        ones whose cached values a write to it invalidates."""
        held = _SETS_BY_SOURCE.get(self)
        return sorted(held or (), key=lambda fs: fs.name)


def declare_feature_set(source: Source, feature_set: FeatureSet) -> None:
    """Note that ``feature_set`` is computed from ``source`` (FeatureSet does, when it is
    constructed), so a write to the source knows whose cached values it changes."""
    _SETS_BY_SOURCE.setdefault(source, weakref.WeakSet()).add(feature_set)


@dataclass(frozen=True, eq=False)
class SqlSource(Source):
    """A table in SQLite or PostgreSQL, read through Stalwart's storage layer.

    ``url`` defaults to the registry's database (``STALWART_DB_URL`` or SQLite under
    ``STALWART_HOME``). Rows that share a timestamp are ordered by ``order_by`` (the
    table's integer primary key by default), which decides which one is "latest" on both
    paths.
    """

    name: str
    table: str
    entity: Entity
    timestamp: str
    url: str | None = None
    order_by: str | None = None

    def __post_init__(self) -> None:
        check_identifier("source", self.name)

    def describe(self) -> dict[str, Any]:
        return {"kind": "sql", "table": self.table, "timestamp": self.timestamp, "order_by": self.order_by}


FILE_SUFFIXES = (".parquet", ".pq", ".csv")


@dataclass(frozen=True, eq=False)
class FileSource(Source):
    """A Parquet or CSV file, or a directory of Parquet files (a dataset, hive partitions
    ``key=value`` read as string columns): read whole for training sets, held in memory
    online. A directory's rows are ordered by file path, then by row within a file: that
    order breaks ties between rows that share a timestamp."""

    name: str
    path: str
    entity: Entity
    timestamp: str

    def __post_init__(self) -> None:
        check_identifier("source", self.name)
        if not (self.path.endswith((*FILE_SUFFIXES, "/")) or is_dataset_path(self.path)):
            raise ConfigError(
                f"source '{self.name}': {self.path} is neither .parquet nor .csv, nor a "
                f"directory of Parquet files (write a directory with a trailing '/')"
            )

    @property
    def is_dataset(self) -> bool:
        """Whether the path names a directory of Parquet files rather than one file."""
        return not self.path.endswith(FILE_SUFFIXES)

    def describe(self) -> dict[str, Any]:
        return {"kind": "file", "path": self.path, "timestamp": self.timestamp}


@dataclass(frozen=True, eq=False)
class CallableSource(Source):
    """An external lookup made by a Python function, online only.

    ``fn(keys)`` takes a list of entity-key tuples and returns ``{key: {column: value}}``
    (current values, no timestamps); it may be a coroutine function. ``offline`` is the
    source that holds the same values over time, used for training sets. The parity
    check is what catches the two drifting apart.
    """

    name: str
    fn: Callable[[list[tuple[Any, ...]]], Any]
    entity: Entity
    offline: Source
    timestamp: str | None = None

    def __post_init__(self) -> None:
        check_identifier("source", self.name)
        if self.offline.entity is None or self.offline.entity.keys != self.entity.keys:
            raise ConfigError(
                f"source '{self.name}': its offline counterpart '{self.offline.name}' must "
                f"describe the same entity keys {list(self.entity.keys)}"
            )

    def describe(self) -> dict[str, Any]:
        return {"kind": "callable", "fn": code_identity(self.fn), "offline": self.offline.describe()}


@dataclass(frozen=True)
class RequestField:
    """One request-time value, referenced by transforms and feature lists."""

    source: str
    name: str
    type: str

    @property
    def dtype(self) -> np.dtype[Any]:
        return FIELD_DTYPES[self.type]


@dataclass(frozen=True, eq=False)
class RequestSource(Source):
    """Values that arrive with the request (and, for training, with each event)."""

    name: str
    fields: Mapping[str, str]
    entity: Entity | None = None
    timestamp: str | None = None

    def __post_init__(self) -> None:
        check_identifier("source", self.name)
        for key, kind in self.fields.items():
            check_identifier(f"request field of '{self.name}'", key)
            if kind not in FIELD_DTYPES:
                raise ConfigError(
                    f"request field '{key}' of '{self.name}' has type {kind!r}; use one of "
                    f"{', '.join(FIELD_DTYPES)}"
                )

    def __getattr__(self, name: str) -> RequestField:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return RequestField(self.__dict__["name"], name, fields[name])
        raise AttributeError(name)

    def field(self, name: str) -> RequestField:
        if name not in self.fields:
            raise ConfigError(f"request source '{self.name}' has no field '{name}'")
        return RequestField(self.name, name, self.fields[name])

    def describe(self) -> dict[str, Any]:
        return {"kind": "request", "fields": dict(self.fields)}


def is_dataset_path(path: str) -> bool:
    """A path without a file suffix (``data/tx``) or with a trailing slash names a
    directory of Parquet files."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return path.endswith("/") or "." not in last


def code_identity(fn: Callable[..., Any]) -> str:
    """What a function's behaviour depends on: its source text when available, else its
    bytecode and constants."""
    try:
        return inspect.getsource(fn).strip()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return repr(fn)
        return hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()
