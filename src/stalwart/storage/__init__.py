"""SQL and Redis plumbing shared by every layer above: engines, schema, migrations."""

from stalwart.storage.database import Database

__all__ = ["Database"]
