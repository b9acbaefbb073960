"""The models a server has loaded, and which version "latest" means right now.

At start the repository loads the latest version of every registered model; the server is
ready when that is done. It then polls the registry (one cheap query) so versions
registered by another process appear without a restart: a new latest version is loaded in
the background and only then becomes what unversioned requests get, so a rollover never
makes a request wait for a load. Other versions load on first use, once, however many
requests ask for them at the same time; a request waits for the load within its deadline
(else 503 with Retry-After).

Loads run one at a time, each measured: the process's growth across it (RSS, or malloc's
bytes in use, the larger) is the version's memory (``serving/memory.py``), shown by ``GET /v1/resources`` and the
``stalwart_model_memory_bytes`` gauge and recorded in the registry. With a memory budget
(``STALWART_MODEL_MEMORY``), a load that would not fit first unloads the least recently
used idle versions, or is refused (``serving/residency.py`` says which and why). Each
version owns its pipeline (a batcher on an executor of its own): unloading closes them,
and the version's chains are dropped; a request that resolved the version just before
loads it again (``serving/chains.py``). With the budget, preloading stops at what fits
without unloading anything; the rest load on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from stalwart.errors import (
    FlavorError,
    MemoryBudgetExceeded,
    ModelNotFound,
    NotReady,
    StalwartError,
    VersionNotFound,
)
from stalwart.monitoring.logs import get_logger
from stalwart.monitoring.metrics import ServingMetrics
from stalwart.pipeline import Stage
from stalwart.registry import ModelVersion, Registry
from stalwart.registry.flavors import Predictor
from stalwart.registry.schemas import SchemaRevision
from stalwart.serving.memory import allocated_bytes, measure
from stalwart.serving.residency import Candidate, Estimate, Usage, choose_victims, estimate
from stalwart.sizes import format_bytes

__all__ = ["LoadedModel", "ModelRepository", "Pipeline", "PipelineFactory", "version_or_not_found"]

_log = get_logger("stalwart.models")

# A request refused because busy versions fill the budget, or whose load did not finish
# within its deadline, is told to retry after this many seconds.
_RETRY_SECONDS = 1.0


async def _nothing_to_close() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A version's own pipeline (its batcher, or a direct call) and what it owns."""

    stage: Stage
    close: Callable[[], Awaitable[None]] = _nothing_to_close  # closes the batcher, releases the threads
    threads: int = 0  # the size of its model executor
    omp_threads: int = 1  # OpenMP threads per model thread
    max_calls: int | None = None  # calls it may have in flight (None: no limit)
    thread_prefix: str = ""  # its executor threads' names start with this and "_"
    concurrency: int = 1  # model calls at once: 1 with batching (one batch at a time), else threads


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version ready to serve: its record, its predictor and its pipeline."""

    version: ModelVersion
    predictor: Predictor
    pipeline: Stage
    loaded_at: float
    schema: SchemaRevision | None = None  # the input schema active when it loaded
    owned: Pipeline | None = None  # the pipeline with what it owns (None: a bare stage)
    memory: int = 0  # bytes it is charged: measured at load (an estimate), else estimated
    measured: bool = False  # whether ``memory`` was measured at its load
    usage: Usage = field(default_factory=lambda: Usage(sys.maxsize, time.monotonic()))


PipelineFactory = Callable[[ModelVersion, Predictor], Pipeline]


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
        on_unloaded: Callable[[LoadedModel], Awaitable[None]] | None = None,
        memory_budget: int | None = None,
        routed: Callable[[], Iterable[tuple[str, int | None]]] | None = None,
    ) -> None:
        """``memory_budget``: bytes the loaded versions may take together (None: no limit).
        ``routed``: the ``(model, version)`` pairs deployments route to now (version None:
        the latest), unloaded last. ``on_unloaded`` runs for each version unloaded, before its
        pipeline closes (the app drops its chains there)."""
        self._on_poll = on_poll
        self._on_loaded = on_loaded
        self._on_unloaded = on_unloaded
        self.memory_budget = memory_budget
        self._routed = routed
        self._load_lock = asyncio.Lock()  # one load at a time: each measured alone
        self._replica = f"{socket.gethostname()}-{os.getpid()}"
        self.evictions = 0  # versions unloaded to make room, since start
        self.refusals = 0  # loads refused for want of memory, since start
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
            # Loads run one at a time anyway; with a budget, preloading stops short of
            # unloading what it loaded itself (the rest load on first use).
            await asyncio.gather(
                *(self._load_in_background(name, version, evict=False) for name, version in self._registered.items())
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

    async def get(self, name: str, version: int | None = None, *, deadline: float | None = None) -> LoadedModel:
        """The loaded model, loading it first if needed (``version=None``: the latest).

        A load waits until ``deadline`` (``time.monotonic()``) at most: past it,
        :class:`NotReady` with ``retry_after`` (the load goes on for the next request)."""
        if version is None:
            serving = self._serving.get(name)
            if serving is not None:
                loaded = self._loaded.get((name, serving))
                if loaded is not None:
                    return loaded
                version = serving  # unloaded (memory budget), or not loaded yet
            else:
                if name not in self._registered:
                    await self._refresh()
                    if name not in self._registered:
                        raise ModelNotFound(name)
                version = self._registered[name]
        loaded = self._loaded.get((name, version))
        if loaded is not None:
            return loaded
        return await self._load(name, version, deadline)

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
            asyncio.get_running_loop().create_task(self._load_in_background(name, version, evict=True))

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def loading(self) -> list[tuple[str, int]]:
        """The versions being loaded (or waiting for their turn) now."""
        return list(self._loading)

    def memory_used(self) -> int:
        """Bytes charged to the loaded versions together."""
        return sum(loaded.memory for loaded in self._loaded.values())

    def protected(self) -> set[tuple[str, int]]:
        """The versions unloaded last: those deployments route to, and each model's latest."""
        keep = set(self._serving.items())
        for model, version in self._routed() if self._routed is not None else ():
            resolved = version if version is not None else self._serving.get(model)
            if resolved is not None:
                keep.add((model, resolved))
        return keep

    def failure(self, name: str, version: int) -> str | None:
        return self._failed.get((name, version))

    async def close_pipelines(self) -> None:
        """Close every loaded version's pipeline (at shutdown, after the last request):
        callers still queued get :class:`NotReady`, the model threads are released."""
        await asyncio.gather(*(loaded.owned.close() for loaded in self._loaded.values() if loaded.owned is not None))

    async def _load(self, name: str, version: int, deadline: float | None = None, *, evict: bool = True) -> LoadedModel:
        key = (name, version)
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load_now(name, version, evict))
            self._loading[key] = task
            task.add_done_callback(lambda _t: self._loading.pop(key, None))
        # shield: a client that disconnects must not cancel a load others are waiting on.
        if deadline is None:
            return await asyncio.shield(task)
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise NotReady(
                f"model {name}:{version} is loading and was not ready within the request's deadline; retry shortly",
                retry_after=_RETRY_SECONDS,
            ) from None

    async def _load_now(self, name: str, version: int, evict: bool) -> LoadedModel:
        async with self._load_lock:
            loaded = self._loaded.get((name, version))
            if loaded is not None:  # loaded while this load waited for its turn
                return loaded
            return await self._load_measured(name, version, evict)

    async def _load_measured(self, name: str, version: int, evict: bool) -> LoadedModel:
        start = time.perf_counter()
        try:
            # Registry reads and artifact loads block; they run on the default executor so
            # they never queue behind model calls.
            mv = await asyncio.to_thread(self._registry.get, name, version)
            expected = None
            if self.memory_budget is not None:
                recorded = await asyncio.to_thread(self._registry.memory.get, name, version)
                expected = estimate(mv, recorded)
                await self._make_room(mv, expected, evict)
                start = time.perf_counter()  # the load itself, not the unloading before it
            # Read the schema now, while loading, so serving never needs the database per request.
            measured = await asyncio.to_thread(measure, lambda: (self._registry.load(mv), self._registry.schemas.active(name, version)))
            predictor, schema = measured.value
        except (ModelNotFound, VersionNotFound):
            # Nothing to load is not a failed load: the name is the client's, so it must not
            # become a metric label, a remembered failure or an error line.
            raise
        except MemoryBudgetExceeded as exc:
            self._refused(name, version, exc)
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
        memory = measured.grew if measured.grew is not None else (expected or estimate(mv, None)).bytes
        if measured.grew is not None:
            await self._record_memory(mv, measured.grew)
        owned = self._factory(mv, predictor)
        usage = Usage(owned.max_calls or sys.maxsize, time.monotonic())
        loaded = LoadedModel(mv, predictor, owned.stage, time.time(), schema, owned, memory, measured.grew is not None, usage)
        if self.memory_budget is not None and expected is not None and memory > expected.bytes:
            # Bigger than expected: make the rest of the room now that the size is known.
            try:
                await self._make_room(mv, Estimate(memory, True), evict)
            except MemoryBudgetExceeded as exc:
                await owned.close()
                self._refused(name, version, exc)
                raise
        self._loaded[(name, version)] = loaded
        self._metrics.model_memory.labels(name, str(version)).set(memory)
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
        _log.info(
            "model loaded", model=name, version=version, flavor=mv.flavor, load_ms=round(elapsed * 1000, 1),
            memory=format_bytes(memory), measured=measured.grew is not None,
        )
        return loaded

    # --- the memory budget ----------------------------------------------------------------

    async def _make_room(self, mv: ModelVersion, expected: Estimate, evict: bool) -> None:
        """Unload idle versions until ``expected`` fits in the budget, or raise
        :class:`MemoryBudgetExceeded` (``evict`` False: unload nothing)."""
        budget = self.memory_budget
        if budget is None:
            return
        if expected.bytes > budget:
            raise MemoryBudgetExceeded(
                f"model {mv.ref} needs {expected.describe()}, more than the whole model memory budget "
                f"(STALWART_MODEL_MEMORY={format_bytes(budget)}); raise the budget, or serve it from a server with more memory"
            )
        held = allocated_bytes()
        unloaded: list[int] = []  # the charges of the versions unloaded so far
        try:
            while True:
                # Chosen again after each unload (which awaits): a version idle a moment ago
                # may have a call in flight now. Choosing and retiring a victim happen with no
                # await between them, so no call can slip into a version being unloaded.
                protected = self.protected()
                candidates = [
                    Candidate(key, loaded.memory, loaded.usage, key in protected) for key, loaded in self._loaded.items()
                ]
                victims = choose_victims(expected.bytes, self.memory_used(), budget, candidates if evict else ())
                if victims is None:
                    busy = sum(1 for c in candidates if not c.usage.idle)
                    raise MemoryBudgetExceeded(
                        f"model {mv.ref} needs {expected.describe()}, and the model memory budget "
                        f"(STALWART_MODEL_MEMORY={format_bytes(budget)}) holds {format_bytes(self.memory_used())} of "
                        f"versions{f', {busy} of them serving requests now' if busy else ''}; retry shortly",
                        retry_after=_RETRY_SECONDS,
                    )
                if not victims:
                    return
                unloaded.append(victims[0].charge)
                await self._unload(victims[0].key, f"to make room for {mv.ref}")
        finally:
            if unloaded:
                await self._released(held, sum(unloaded))

    async def _released(self, held: int | None, freed: int) -> None:
        """After unloading versions charged ``freed`` bytes: see that their memory went."""
        # One turn of the loop: the closed batchers' tasks run their done callbacks, which
        # hold the tasks (and through them the batchers) until then.
        await asyncio.sleep(0)
        if gc.get_freeze_count():
            # Frozen objects (gc.freeze, after every load) are never collected: an unloaded
            # model held in a reference cycle would stay in memory for good. Reference
            # counting frees the usual model at once; only when less than half of what the
            # unloaded versions were charged came back is everything unfrozen and collected
            # (a full collection over a server's objects holds the event loop 0.1 to 0.2 s).
            now = allocated_bytes()
            if held is None or now is None or held - now < freed // 2:
                gc.unfreeze()
                gc.collect()
                gc.freeze()

    async def _unload(self, key: tuple[str, int], reason: str) -> None:
        """Unload an idle version: later requests load it again. Call it right after
        seeing the version idle, with no await between (its first lines retire it)."""
        loaded = self._loaded.pop(key)
        loaded.usage.retired = True
        name, version = key
        self.evictions += 1
        self._metrics.model_evictions.labels(name, str(version)).inc()
        with contextlib.suppress(KeyError):
            self._metrics.model_memory.remove(name, str(version))
        self._metrics.models_loaded.set(len(self._loaded))
        if self._on_unloaded is not None:
            await self._on_unloaded(loaded)
        if loaded.owned is not None:
            await loaded.owned.close()
        _log.info(
            "model unloaded", model=name, version=version, memory=format_bytes(loaded.memory), reason=reason,
            idle_s=round(time.monotonic() - loaded.usage.last_used, 3),
        )

    def _refused(self, name: str, version: int, exc: MemoryBudgetExceeded) -> None:
        self.refusals += 1
        reason = "too_large" if exc.retry_after is None else "busy"
        self._metrics.model_memory_refusals.labels(name, reason).inc()
        if exc.retry_after is None:
            self._load_failed(name, version, exc.message)  # no retry helps: ready probes say why
        else:
            _log.info("model load refused for now", model=name, version=version, error=exc.message)

    async def _record_memory(self, mv: ModelVersion, size: int) -> None:
        try:
            await asyncio.to_thread(self._registry.memory.record, mv.name, mv.version, size, replica=self._replica)
        except StalwartError as exc:  # the figure is a hint for later loads: never worth failing this one
            _log.warning("could not record a model's memory", model=mv.name, version=mv.version, error=exc.message)

    def _load_failed(self, name: str, version: int, message: str) -> None:
        self._failed[(name, version)] = message
        self._metrics.model_load_failures.labels(name, str(version)).inc()
        _log.error("model load failed", model=name, version=version, error=message)

    async def _load_in_background(self, name: str, version: int, *, evict: bool) -> None:
        """Load a version nobody is waiting for (preload, a new latest version). A broken
        version must not stop the others loading; its error is kept and shown to whoever
        asks for it. One that does not fit the budget now becomes the model's latest
        anyway, and loads on first use."""
        try:
            await self._load(name, version, evict=evict)
        except MemoryBudgetExceeded as exc:
            if exc.retry_after is not None and version >= self._serving.get(name, 0):
                self._serving[name] = version
        except StalwartError:
            pass

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
                serving = self._serving.get(name)
                if (serving is not None and serving >= version) or (name, version) in self._failed:
                    continue
                if serving is not None and (name, serving) not in self._loaded and self.memory_budget is not None:
                    # The version it replaces is not loaded (the budget unloaded it): no
                    # rollover to keep smooth, so the new one loads on first use too.
                    self._serving[name] = version
                    continue
                # A rollover may unload idle versions; a model new to this server may not.
                await self._load_in_background(name, version, evict=serving is not None)
            if self._on_poll is not None:
                await self._on_poll()


def version_or_not_found(raw: str, name: str) -> int:
    """A version path segment as an int (anything else is a version that does not exist)."""
    if raw.isascii() and raw.isdigit() and len(raw) < 10:
        return int(raw)
    raise VersionNotFound(name, raw)
