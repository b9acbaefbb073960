"""Placeholder until the parquet sink lands (replaced by its implementation)."""

from __future__ import annotations

from stalwart.config import Settings
from stalwart.errors import PredictionLogError


class ParquetSink:
    @classmethod
    def from_settings(cls, settings: Settings) -> ParquetSink:
        raise PredictionLogError("the parquet prediction sink is not built yet")
