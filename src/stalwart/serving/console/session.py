"""Console logins: a signed session cookie, and the CSRF token every form carries.

Logging in takes an admin token (the control plane's, :class:`~stalwart.serving.auth.BearerAuth`)
once. The browser then holds a session cookie, never the token: ``<payload>.<mac>``, the
payload (base64url JSON: the token's name, the expiry, a random nonce) signed with HMAC-SHA256
under a key derived from the server's tokens (:meth:`BearerAuth.derive_key`). Any replica
with the same tokens accepts it; changing any token ends every session. The cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it),
``Secure`` unless ``STALWART_UI_SECURE_COOKIE=false``, and scoped to ``/ui``.

Every form that changes something carries the session's CSRF token, an HMAC of its nonce
under another derived key, checked in constant time: a page of another origin can neither
read it nor send the cookie. The login form, before any session, is protected the same way
by a short-lived nonce in a cookie and in the form (double submit).

Logging out removes the cookie from the browser; a copy of it taken earlier stays valid
until it expires (``STALWART_UI_SESSION_HOURS``) or a token changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from stalwart.serving.auth import BearerAuth

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "Session", "Sessions"]

SESSION_COOKIE: Final = "stalwart_ui_session"
LOGIN_COOKIE: Final = "stalwart_ui_login"
_PATH: Final = "/ui"
_LOGIN_SECONDS: Final = 15 * 60  # to fill the login form in
_MAX_COOKIE: Final = 1024


@dataclass(frozen=True, slots=True)
class Session:
    """Who is logged in (the name of the token they gave), until when, and the CSRF token
    their forms carry."""

    actor: str
    expires: float
    csrf: str


class Sessions:
    """Issues and checks session cookies and CSRF tokens (see the module docstring)."""

    def __init__(
        self, auth: BearerAuth, *, hours: float, secure: bool, clock: Callable[[], float] = time.time
    ) -> None:
        self._auth = auth
        self._seconds = hours * 3600
        self._secure = secure
        self._clock = clock
        self._session_key = auth.derive_key("stalwart console session v1")
        self._csrf_key = auth.derive_key("stalwart console csrf v1")

    # -- logging in ---------------------------------------------------------------------

    @staticmethod
    def login_nonce() -> str:
        """A new nonce for a login form (:meth:`send_login_nonce` sets its cookie)."""
        return secrets.token_urlsafe(24)

    def send_login_nonce(self, response: Response, nonce: str) -> None:
        """Set the cookie holding the login form's ``nonce`` on ``response``."""
        self._cookie(response, LOGIN_COOKIE, nonce, _LOGIN_SECONDS)

    def login_nonce_ok(self, request: Request, presented: str) -> bool:
        """Whether the login form's nonce is the one its cookie holds."""
        expected = request.cookies.get(LOGIN_COOKIE, "")
        return bool(expected) and secrets.compare_digest(expected.encode(), presented.encode())

    def log_in(self, token: str, response: Response) -> Session | None:
        """Check ``token`` and, when it is an admin token, set the session cookie on
        ``response`` (and drop the login nonce's); None for a wrong token."""
        actor = self._auth.identify(token)
        if actor is None:
            return None
        nonce = secrets.token_urlsafe(16)
        expires = self._clock() + self._seconds
        payload = _b64(json.dumps({"a": actor, "e": round(expires), "n": nonce}, separators=(",", ":")).encode())
        self._cookie(response, SESSION_COOKIE, f"{payload}.{_b64(self._mac(payload))}", int(self._seconds))
        response.delete_cookie(LOGIN_COOKIE, path=_PATH, secure=self._secure, httponly=True, samesite="strict")
        return Session(actor, float(round(expires)), self._csrf(nonce))

    def log_out(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path=_PATH, secure=self._secure, httponly=True, samesite="strict")

    # -- checking -----------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        """The request's session when its cookie is one this server signed, unexpired, for
        a token that still exists; else None."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if not cookie or len(cookie) > _MAX_COOKIE:
            return None
        payload, _, mac = cookie.partition(".")
        try:
            signature = _unb64(mac)
            if not hmac.compare_digest(signature, self._mac(payload)):
                return None
            fields = json.loads(_unb64(payload))
            actor, expires, nonce = fields["a"], float(fields["e"]), fields["n"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if not isinstance(actor, str) or not isinstance(nonce, str) or expires <= self._clock():
            return None
        if actor not in self._auth.names:
            return None
        return Session(actor, expires, self._csrf(nonce))

    @staticmethod
    def csrf_ok(session: Session, presented: str) -> bool:
        """Whether a form's CSRF token is its session's (constant time)."""
        return bool(presented) and secrets.compare_digest(session.csrf.encode(), presented.encode())

    # -- pieces -------------------------------------------------------------------------

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._session_key, payload.encode(), hashlib.sha256).digest()

    def _csrf(self, nonce: str) -> str:
        return _b64(hmac.new(self._csrf_key, nonce.encode(), hashlib.sha256).digest())

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path=_PATH, secure=self._secure, httponly=True, samesite="strict"
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
