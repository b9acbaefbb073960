"""Bearer-token checks for control-plane calls, and who made them.

Mutating calls (writing source rows, invalidating cached features, and the rollout calls to
come) and reads of data-bearing reports need ``Authorization: Bearer <token>``. The tokens
are ``STALWART_ADMIN_TOKEN`` (or the token generated into ``STALWART_HOME/admin_token`` when
none is set), named ``admin``, and the named tokens of ``STALWART_ADMIN_TOKENS``
(``{"alice": "...", "deploy-bot": "..."}``). :meth:`BearerAuth.require` answers with the
name of the token presented, which the routes record in the audit log as the actor. Tokens
are compared in constant time, every one of them on every call, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

from starlette.requests import Request

from stalwart.config import Settings
from stalwart.errors import AuthError, ConfigError

__all__ = ["ADMIN", "BearerAuth"]

ADMIN = "admin"  # the name of STALWART_ADMIN_TOKEN (or the generated token)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")


class BearerAuth:
    """Checks a request's bearer token against the server's named tokens."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        """``tokens``: name -> token. Names appear in the audit log; tokens must be
        non-empty and distinct (one token under two names could not say who acted)."""
        seen: set[str] = set()
        for name, token in tokens.items():
            if not _NAME.match(name):
                raise ConfigError(
                    f"STALWART_ADMIN_TOKENS: {name!r} is not a token name; use up to 100 letters, "
                    f"digits, '_', '.', '@' and '-'"
                )
            if not token.strip():
                raise ConfigError(f"STALWART_ADMIN_TOKENS: the token named {name!r} is empty; give it a long random value")
            if token in seen:
                raise ConfigError(
                    f"STALWART_ADMIN_TOKENS: the token named {name!r} is also another name's token; "
                    f"give every name its own, so the audit log can tell who acted"
                )
            seen.add(token)
        self._tokens = [(name, token.encode()) for name, token in tokens.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> BearerAuth:
        """``admin`` (the admin token) and every named token of the settings."""
        if ADMIN in settings.admin_tokens:
            raise ConfigError(
                f"STALWART_ADMIN_TOKENS: '{ADMIN}' names STALWART_ADMIN_TOKEN (or the generated "
                f"token); choose another name"
            )
        named = {name: token.get_secret_value() for name, token in settings.admin_tokens.items()}
        return cls({ADMIN: settings.resolved_admin_token(), **named})

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._tokens]

    def require(self, request: Request) -> str:
        """The name of the token the request presents; AuthError (401) without a valid one."""
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise AuthError(
                "this call changes the server's state: send 'Authorization: Bearer <token>' with "
                "an admin token (STALWART_ADMIN_TOKEN or the file STALWART_HOME/admin_token, or "
                "one of STALWART_ADMIN_TOKENS)"
            )
        found = self.identify(presented)
        if found is None:
            raise AuthError("the bearer token is not an admin token")
        return found

    def identify(self, presented: str) -> str | None:
        """The name of the token ``presented`` is (surrounding blanks ignored), else None."""
        candidate = presented.strip().encode()
        found: str | None = None
        # Every token is compared, matched or not, so the time taken says nothing about
        # which one (or how many) the presented value came close to.
        for name, token in self._tokens:
            if secrets.compare_digest(candidate, token) and found is None:
                found = name
        return found

    def derive_key(self, purpose: str) -> bytes:
        """A secret for ``purpose`` (a fixed label: what the key signs), derived from every
        token: it changes, and what it signed stops verifying, when any token changes."""
        material = b"\0".join(hashlib.sha256(name.encode() + b"\0" + token).digest() for name, token in sorted(self._tokens))
        return hmac.new(material, purpose.encode(), hashlib.sha256).digest()
