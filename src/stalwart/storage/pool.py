"""Databases by URL, opened once each: the registry's and any a SQL source names."""

from __future__ import annotations

from stalwart.config import Settings, load_settings
from stalwart.storage.database import Database

__all__ = ["DatabasePool"]


class DatabasePool:
    """One :class:`Database` per URL (``None``: the settings' database), opened on demand."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._open: dict[str, Database] = {}

    def __call__(self, url: str | None) -> Database:
        if url is None:
            url = (self._settings or load_settings()).resolved_db_url()
        db = self._open.get(url)
        if db is None:
            db = Database(url)
            self._open[url] = db
        return db

    def dispose(self) -> None:
        for db in self._open.values():
            db.dispose()
        self._open.clear()
