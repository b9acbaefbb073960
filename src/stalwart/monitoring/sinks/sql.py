"""Placeholder until the sql sink lands (replaced by its implementation)."""

from __future__ import annotations

from stalwart.config import Settings
from stalwart.errors import PredictionLogError


class SqlSink:
    @classmethod
    def from_settings(cls, settings: Settings) -> SqlSink:
        raise PredictionLogError("the sql prediction sink is not built yet")
