"""Placeholder until the nats sink lands (replaced by its implementation)."""

from __future__ import annotations

from stalwart.config import Settings
from stalwart.errors import PredictionLogError


class NatsSink:
    @classmethod
    def from_settings(cls, settings: Settings) -> NatsSink:
        raise PredictionLogError("the nats prediction sink is not built yet")
