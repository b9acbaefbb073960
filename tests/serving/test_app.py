"""The application's lifespan: what starting and stopping the server does to the process."""

from __future__ import annotations

import gc

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.serving.app import create_app


async def test_startup_hides_long_lived_objects_from_the_collector(settings: Settings, registry: Registry) -> None:
    """Libraries and models loaded at start are frozen out of the garbage collector's scans
    while the server runs (full collections would otherwise stall requests for a tenth of
    a second), and handed back when it stops."""
    app = create_app(settings, registry=registry)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0


async def test_gc_freeze_can_be_turned_off(settings: Settings, registry: Registry) -> None:
    """STALWART_GC_FREEZE=false leaves the collector alone (for an app embedding Stalwart)."""
    app = create_app(settings.model_copy(update={"gc_freeze": False}), registry=registry)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
