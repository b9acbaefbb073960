"""Bearer-token checks for control-plane calls.

Mutating calls (writing source rows, invalidating cached features, and the rollout calls to
come) and reads of data-bearing reports need ``Authorization: Bearer <token>``, compared in
constant time with ``STALWART_ADMIN_TOKEN`` (or the token generated into
``STALWART_HOME/admin_token`` when none is set). The token is never logged.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request

from stalwart.errors import AuthError

__all__ = ["BearerAuth"]


class BearerAuth:
    """Checks a request's bearer token against the server's admin token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def require(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise AuthError(
                "this call changes the server's state: send 'Authorization: Bearer <token>' with "
                "the admin token (STALWART_ADMIN_TOKEN, or the file STALWART_HOME/admin_token)"
            )
        if not secrets.compare_digest(presented.strip().encode(), self._token):
            raise AuthError("the bearer token is not the admin token")
