"""What the console reads and acts on: the running server's parts, gathered once in
``create_app`` and handed to every page."""

from __future__ import annotations

from dataclasses import dataclass

from stalwart.cache import FeatureCache
from stalwart.config import Settings
from stalwart.monitoring.sinks import PredictionStore
from stalwart.project import Project
from stalwart.registry import Registry
from stalwart.rollout.rollouts import RolloutStore
from stalwart.serving.console.live import LiveStats
from stalwart.serving.console.render import Pages
from stalwart.serving.console.session import Sessions
from stalwart.serving.dataplane import DataPlane

__all__ = ["Console"]


@dataclass(frozen=True, slots=True)
class Console:
    """The server's parts the console's pages read (and its actions call)."""

    settings: Settings
    project: Project
    registry: Registry
    plane: DataPlane
    rollouts: RolloutStore
    store: PredictionStore | None  # the prediction log's read side (None: it cannot be read back)
    cache: FeatureCache | None
    live: LiveStats
    sessions: Sessions
    pages: Pages
