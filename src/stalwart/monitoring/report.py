"""Building the monitoring report document from the database: drift, profiles, quality,
skew and alerts of one deployment in one window.

Placeholder until the lead wires the builders together; ``stalwart monitor report
--from-json`` renders a saved document meanwhile.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from stalwart.config import Settings
from stalwart.storage.database import Database

__all__ = ["build_report"]


def build_report(database: Database, deployment: str, since: dt.datetime, until: dt.datetime, *, settings: Settings) -> dict[str, Any]:
    """The report of ``deployment`` from ``since`` (inclusive) to ``until`` (exclusive), both
    aware UTC times, as the dict :meth:`ReportDocument.from_dict` reads."""
    raise NotImplementedError("wired by the lead")
