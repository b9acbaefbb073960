"""A subscription kept alive in the background: what the Redis invalidation bus and the
PostgreSQL NOTIFY listener share (start, wait until connected, stop)."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Background"]


class Background:
    """Runs :meth:`_run` (which reconnects by itself) as one task, from :meth:`start` to
    :meth:`stop`; :meth:`_run` sets ``_up`` while connected."""

    _task_name = "stalwart-background"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()

    async def start(self) -> None:
        """Connect in the background (returns at once; see :meth:`wait_connected`)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._task_name)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until connected; False if ``timeout`` seconds pass first."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Disconnect and stop reconnecting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stopped()

    async def _run(self) -> None:
        raise NotImplementedError

    def _stopped(self) -> None:
        """What stopping means for the subclass's state (called after the task ended)."""
        self._up.clear()
