"""The models a server has loaded, and which version "latest" means right now.

At start the repository loads the latest version of every registered model; the server is
ready when that is done. It then polls the registry (one cheap query) so versions
registered by another process appear without a restart: a new latest version is loaded in
the background and only then becomes what unversioned requests get, so a rollover never
makes a request wait for a load. Other versions load on first use, once, however many
requests ask for them at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from stalwart.errors import FlavorError, ModelNotFound, StalwartError, VersionNotFound
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.metrics import ServingMetrics
from stalwart.pipeline import Stage
from stalwart.registry import ModelVersion, Registry
from stalwart.registry.flavors import Predictor
from stalwart.registry.schemas import SchemaRevision

__all__ = ["LoadedModel", "ModelRepository", "PipelineFactory", "version_or_not_found"]

_log = get_logger("stalwart.models")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version ready to serve: its record, its predictor and its pipeline."""

    version: ModelVersion
    predictor: Predictor
    pipeline: Stage
    loaded_at: float
    schema: SchemaRevision | None = None  # the input schema active when it loaded


PipelineFactory = Callable[[ModelVersion, Predictor], Stage]


class ModelRepository:
    """Loaded model versions, keyed by ``(name, version)``."""

    def __init__(
        self,
        registry: Registry,
        pipeline_factory: PipelineFactory,
        metrics: ServingMetrics,
        *,
        poll_seconds: float = 2.0,
        preload: bool = True,
        on_poll: Callable[[], Awaitable[None]] | None = None,
        on_loaded: Callable[[], None] | None = None,
    ) -> None:
        self._on_poll = on_poll
        self._on_loaded = on_loaded
        self._registry = registry
        self._factory = pipeline_factory
        self._metrics = metrics
        self._poll_seconds = poll_seconds
        self._preload = preload
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._loading: dict[tuple[str, int], asyncio.Task[LoadedModel]] = {}
        self._failed: dict[tuple[str, int], str] = {}
        self._registered: dict[str, int] = {}  # latest version per model, per the registry
        self._serving: dict[str, int] = {}  # what an unversioned request gets
        self._ready = False
        self._poller: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        """Read the registry, then load the latest version of every model in the background
        and keep watching the registry.

        Loading runs after start returns, so the server is listening while it loads: liveness
        answers 200 and readiness 503 until every model has loaded (or failed to).
        """
        await self._refresh()
        self._poller = asyncio.create_task(self._preload_then_poll(), name="stalwart-registry-poll")

    async def _preload_then_poll(self) -> None:
        if self._preload:
            await asyncio.gather(
                *(self._load_quietly(name, version) for name, version in self._registered.items())
            )
        self._ready = True
        await self._poll()

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        loading = list(self._loading.values())
        for task in loading:
            task.cancel()
        # Wait for them to finish cancelling, whatever they raise: nothing may outlive stop().
        await asyncio.gather(*loading, return_exceptions=True)

    async def wait_ready(self) -> None:
        """Return once the models preloaded at start have loaded (or failed to)."""
        while not self._ready:
            await asyncio.sleep(0.05)

    def not_ready_reason(self) -> str | None:
        return None if self._ready else "the server is still loading its models"

    async def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded model, loading it first if needed (``version=None``: the latest)."""
        if version is None:
            serving = self._serving.get(name)
            if serving is not None:
                return self._loaded[(name, serving)]
            if name not in self._registered:
                await self._refresh()
                if name not in self._registered:
                    raise ModelNotFound(name)
            version = self._registered[name]
        loaded = self._loaded.get((name, version))
        if loaded is not None:
            return loaded
        return await self._load(name, version)

    async def describe(self, name: str, version: int | None = None) -> ModelVersion:
        """A version's registry record, without loading it (``None``: the latest)."""
        if version is None:
            version = self._serving.get(name)
        if version is not None and (loaded := self._loaded.get((name, version))) is not None:
            return loaded.version
        return await asyncio.to_thread(self._registry.get, name, version)

    def is_loaded(self, name: str, version: int) -> bool:
        return (name, version) in self._loaded

    def warm(self, name: str, version: int) -> None:
        """Start loading a version in the background (a readiness probe asks for it)."""
        if (name, version) not in self._loaded and (name, version) not in self._loading:
            asyncio.get_running_loop().create_task(self._load_quietly(name, version))

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def failure(self, name: str, version: int) -> str | None:
        return self._failed.get((name, version))

    async def _load(self, name: str, version: int) -> LoadedModel:
        key = (name, version)
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load_now(name, version))
            self._loading[key] = task
            task.add_done_callback(lambda _t: self._loading.pop(key, None))
        # shield: a client that disconnects must not cancel a load others are waiting on.
        return await asyncio.shield(task)

    async def _load_now(self, name: str, version: int) -> LoadedModel:
        start = time.perf_counter()
        try:
            # Registry reads and artifact loads block; they run on the default executor so
            # they never queue behind model calls.
            mv = await asyncio.to_thread(self._registry.get, name, version)
            predictor = await asyncio.to_thread(self._registry.load, mv)
            # Read now, while loading, so serving never needs the database per request.
            schema = await asyncio.to_thread(self._registry.schemas.active, name, version)
        except (ModelNotFound, VersionNotFound):
            # Nothing to load is not a failed load: the name is the client's, so it must not
            # become a metric label, a remembered failure or an error line.
            raise
        except StalwartError as exc:
            self._load_failed(name, version, exc.message)
            raise
        except Exception as exc:
            # A model's own module can raise anything on import; one broken model must not
            # stop the others loading, or the registry poll.
            error = FlavorError(f"loading model {name}:{version} raised {type(exc).__name__}: {exc}")
            self._load_failed(name, version, error.message)
            raise error from exc
        elapsed = time.perf_counter() - start
        loaded = LoadedModel(mv, predictor, self._factory(mv, predictor), time.time(), schema)
        self._loaded[(name, version)] = loaded
        if self._on_loaded is not None:
            self._on_loaded()
        self._failed.pop((name, version), None)
        self._metrics.model_load.labels(name, str(version)).observe(elapsed)
        self._metrics.models_loaded.set(len(self._loaded))
        # Only what is known to be the latest becomes what unversioned requests get: a model
        # this server has not yet seen in the registry may have newer versions than the one
        # a client asked for by number.
        latest = self._registered.get(name)
        if latest is not None and version >= latest and version >= self._serving.get(name, 0):
            self._serving[name] = version
        if mv.trust == "pickle":
            _log.warning("loaded a pickled model the registering user trusted", model=name, version=version)
        _log.info("model loaded", model=name, version=version, flavor=mv.flavor, load_ms=round(elapsed * 1000, 1))
        return loaded

    def _load_failed(self, name: str, version: int, message: str) -> None:
        self._failed[(name, version)] = message
        self._metrics.model_load_failures.labels(name, str(version)).inc()
        _log.error("model load failed", model=name, version=version, error=message)

    async def _load_quietly(self, name: str, version: int) -> None:
        # A broken version must not stop the others loading; its error is kept and shown
        # to whoever asks for it.
        with contextlib.suppress(StalwartError):
            await self._load(name, version)

    async def _refresh(self) -> None:
        self._registered = await asyncio.to_thread(self._registry.latest_versions)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self._refresh()
            except StalwartError as exc:
                _log.warning("registry poll failed", error=exc.message)
                continue
            for name, version in self._registered.items():
                if self._serving.get(name, 0) < version and (name, version) not in self._failed:
                    await self._load_quietly(name, version)
            if self._on_poll is not None:
                await self._on_poll()


def version_or_not_found(raw: str, name: str) -> int:
    """A version path segment as an int (anything else is a version that does not exist)."""
    if raw.isascii() and raw.isdigit() and len(raw) < 10:
        return int(raw)
    raise VersionNotFound(name, raw)
