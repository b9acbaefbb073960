"""One chaos world for the package's tests (``benchmarks/chaos``): a private PostgreSQL and
Redis, the spool on a tmpfs, the fraud model with its fault switch and fallback, and
``stalwart serve`` on the chaos project, made once (about 15 s) and shared."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from benchmarks.chaos.faults import Context
from benchmarks.chaos.traffic import request_pool
from benchmarks.chaos.world import World, WorldOptions

CARDS = 200


@pytest.fixture(scope="package")
def world() -> Iterator[World]:
    with World(WorldOptions(cards=CARDS, days=35)) as opened:
        opened.start_server()
        yield opened


@pytest.fixture
def ctx(world: World) -> Context:
    """The world's server (started again if a test stopped it) and the request pool."""
    server = world.server or world.start_server()
    return Context(world, server.url, capacity=0.0, pool=request_pool(world.frame, cards=CARDS), workdir=world.root)
