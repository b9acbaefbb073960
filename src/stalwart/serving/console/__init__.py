"""The web console at ``/ui`` (docs/console.md): server-rendered pages over the running
server and its database, a login with an admin token for request data and actions, and
live per-deployment numbers from :class:`LiveStats`, a request tap."""

from stalwart.serving.console.live import LiveStats
from stalwart.serving.console.routes import console_routes
from stalwart.serving.console.state import Console

__all__ = ["Console", "LiveStats", "console_routes"]
