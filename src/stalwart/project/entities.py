"""Entities: who features describe, and the key columns that identify one. Also the rule
every declared name follows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stalwart.errors import ConfigError

__all__ = ["Entity", "check_identifier"]


def check_identifier(kind: str, name: str) -> None:
    """Refuse a name that is not a plain identifier: names become SQL columns, cache keys
    and JSON fields, so they stay letters, digits and '_'."""
    if not name or not name.replace("_", "a").isalnum() or not name[0].isalpha():
        raise ConfigError(
            f"{kind} name {name!r} must start with a letter and hold only letters, digits and '_'"
        )


@dataclass(frozen=True)
class Entity:
    """Who features describe, and the key column(s) that identify one.

    >>> Entity("card", keys=["card_id"]).keys
    ('card_id',)
    """

    name: str
    keys: Sequence[str]

    def __post_init__(self) -> None:
        check_identifier("entity", self.name)
        object.__setattr__(self, "keys", tuple(self.keys))
        if not self.keys:
            raise ConfigError(f"entity '{self.name}' needs at least one key column")
        for key in self.keys:
            check_identifier(f"entity '{self.name}' key", key)
