"""SQL and Redis plumbing shared by every layer above: engines, schema, migrations."""

from stalwart.storage.database import Database
from stalwart.storage.pool import DatabasePool

__all__ = ["Database", "DatabasePool"]
