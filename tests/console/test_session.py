"""Console sessions: a cookie this server signed, for a token it still has, until it
expires; CSRF tokens bound to the session; where the browser may be sent back to."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from stalwart.serving.auth import BearerAuth
from stalwart.serving.console.actions import local_path
from stalwart.serving.console.session import SESSION_COOKIE, Sessions


def _request(cookie: str | None) -> Request:
    headers = [] if cookie is None else [(b"cookie", f"{SESSION_COOKIE}={cookie}".encode())]
    return Request({"type": "http", "method": "GET", "path": "/ui", "headers": headers})


def _cookie(response: Response) -> str:
    header = next(v for k, v in response.raw_headers if k == b"set-cookie" and v.startswith(SESSION_COOKIE.encode()))
    return header.decode().split(";")[0].split("=", 1)[1]


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_login_makes_a_session_that_only_this_server_accepts() -> None:
    """The right token makes a session under its name; a wrong one none; the cookie holds no
    token; a changed byte, another server's key, expiry or a changed token end it."""
    clock = Clock()
    auth = BearerAuth({"admin": "tok-admin", "alice": "tok-alice"})
    sessions = Sessions(auth, hours=1, secure=True, clock=clock)
    assert sessions.log_in("wrong", Response()) is None
    response = Response()
    made = sessions.log_in(" tok-alice ", response)
    assert made is not None
    assert made.actor == "alice"
    cookie = _cookie(response)
    assert "tok-alice" not in cookie
    found = sessions.session(_request(cookie))
    assert found == made
    assert sessions.session(_request(None)) is None
    assert sessions.session(_request(cookie[:-1] + ("A" if cookie[-1] != "A" else "B"))) is None
    assert sessions.session(_request("garbage.with.dots")) is None
    other = Sessions(BearerAuth({"admin": "another", "alice": "tok-alice"}), hours=1, secure=True, clock=clock)
    assert other.session(_request(cookie)) is None  # the tokens changed: every session ends
    clock.now += 3601
    assert sessions.session(_request(cookie)) is None


def test_csrf_tokens_are_per_session() -> None:
    """A form's token passes for its own session only."""
    sessions = Sessions(BearerAuth({"admin": "tok"}), hours=1, secure=False)
    first, second = sessions.log_in("tok", Response()), sessions.log_in("tok", Response())
    assert first is not None
    assert second is not None
    assert Sessions.csrf_ok(first, first.csrf)
    assert not Sessions.csrf_ok(first, second.csrf)
    assert not Sessions.csrf_ok(first, "")


def test_the_browser_is_only_sent_back_to_console_pages() -> None:
    """After a login or an action, only a path of this console is followed."""
    for bad in ["https://evil.example/ui", "//evil.example/ui", "/\\evil.example", "/v1/deployments", "/uix", "javascript:alert(1)", "", None]:
        assert local_path(bad, "/ui") == "/ui", bad
    assert local_path("/ui/deployments/fraud?since=1h", "/ui") == "/ui/deployments/fraud?since=1h"
