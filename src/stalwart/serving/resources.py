"""``GET /v1/resources``: what the loaded model versions hold, against the limits.

The process's resident memory, the model memory budget and what the loaded versions are
charged against it, and per loaded version: its memory (measured at load, an estimate),
when it loaded and was last used, its calls in flight, its model executor (threads, the
ones alive now) and OpenMP threads, and its call limit; with the limits in effect
server-wide and per model. Calls in flight and last use are counted only where something
needs them (a memory budget, a call limit); elsewhere they are null (``tracked`` false),
so a server without either pays nothing per request for them. Read from memory only (no database), so it is cheap to poll.
Like ``/metrics`` it needs no token: it holds no request data.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stalwart.config import Settings
from stalwart.serving.memory import process_rss
from stalwart.serving.middleware import request_info
from stalwart.serving.repository import LoadedModel, ModelRepository
from stalwart.serving.responses import json_response

__all__ = ["resource_routes", "resources"]


def resource_routes(repository: ModelRepository, settings: Settings) -> list[Route]:
    """The ``GET /v1/resources`` route."""

    async def get_resources(request: Request) -> Response:
        request_info(request.scope).endpoint = "/v1/resources"
        return json_response(resources(repository, settings))

    return [Route("/v1/resources", get_resources, methods=["GET"])]


def resources(repository: ModelRepository, settings: Settings) -> dict[str, Any]:
    """The document ``GET /v1/resources`` answers (see the module docstring)."""
    budget = repository.memory_budget
    used = repository.memory_used()
    alive = _threads_by_prefix()
    protected = repository.protected()
    now, clock = time.time(), time.monotonic()
    models = [
        _version(loaded, alive, (loaded.version.name, loaded.version.version) in protected, now, clock, budget is not None)
        for loaded in sorted(repository.loaded(), key=lambda m: (m.version.name, m.version.version))
    ]
    return {
        "process": {"pid": os.getpid(), "rss_bytes": process_rss(), "threads": threading.active_count()},
        "memory": {
            "budget_bytes": budget,
            "used_bytes": used,
            "free_bytes": None if budget is None else max(0, budget - used),
            "evictions": repository.evictions,
            "refusals": repository.refusals,
        },
        "limits": {
            "threads": settings.model_threads,
            "omp_threads": settings.model_omp_threads,
            "max_calls": settings.model_max_calls,
            "batching": settings.batching,
            "models": {name: limits.model_dump() for name, limits in sorted(settings.model_limits.items())},
        },
        "models": models,
        "loading": [{"name": name, "version": version} for name, version in sorted(repository.loading())],
    }


def _version(loaded: LoadedModel, alive: dict[str, int], protected: bool, now: float, clock: float, tracks_all: bool) -> dict[str, Any]:
    mv = loaded.version
    usage = loaded.usage
    owned = loaded.owned
    tracked = tracks_all or usage.max_calls != sys.maxsize
    return {
        "name": mv.name,
        "version": mv.version,
        "memory_bytes": loaded.memory,
        "measured": loaded.measured,
        "loaded_at": loaded.loaded_at,
        "tracked": tracked,
        "last_used_at": now - (clock - usage.last_used) if tracked else None,
        "in_flight": usage.in_flight if tracked else None,
        "protected": protected,
        "threads": {
            "max": owned.threads if owned is not None else 0,
            "alive": alive.get(owned.thread_prefix, 0) if owned is not None else 0,
            "omp": owned.omp_threads if owned is not None else 1,
        },
        "concurrency": owned.concurrency if owned is not None else 1,
        "max_calls": owned.max_calls if owned is not None else None,
    }


def _threads_by_prefix() -> dict[str, int]:
    """Live threads per executor prefix (an executor names its threads ``<prefix>_<n>``)."""
    counts: dict[str, int] = {}
    for thread in threading.enumerate():
        prefix, sep, number = thread.name.rpartition("_")
        if sep and number.isdigit():
            counts[prefix] = counts.get(prefix, 0) + 1
    return counts
