"""The console over plain HTTP: what each page may show to whom, the headers it is sent
with, that data is escaped, and that actions need a session and its CSRF token and act
through the same commands as the admin API (audit log included)."""

from __future__ import annotations

import re

import pytest

from stalwart.config import Settings
from stalwart.project import Project
from stalwart.serving.app import create_app
from stalwart.serving.console.render import CSP
from tests.console.conftest import NAME, TOKEN, XSS, XSS_IMG, ConsoleServer, cookie_header
from tests.servers import start_server

PUBLIC = ["/ui", "/ui/live", f"/ui/deployments/{NAME}", f"/ui/deployments/{NAME}/live", f"/ui/deployments/{NAME}/rollout",
          f"/ui/deployments/{NAME}/shadows", "/ui/models/scorer", "/ui/login"]
PRIVATE = [f"/ui/deployments/{NAME}/monitoring", f"/ui/deployments/{NAME}/predictions", "/ui/predictions/anything"]
ROLLBACK = f"/ui/deployments/{NAME}/rollout/rollback"


@pytest.mark.slow  # the rollout and shadow pages draw their plots (matplotlib): seconds
def test_pages_escape_data_and_carry_the_console_headers(console: ConsoleServer) -> None:
    """Every page answers 200 with the Content-Security-Policy and no-store; markup in names,
    descriptions, reasons and request ids arrives as text; the logged-in pages too."""
    session = console.login()
    # (The monitoring page is drawn in the browser test: its plots take seconds.)
    for path in [*PUBLIC, PRIVATE[1], "/ui/predictions/" + XSS]:
        page = console.get(path, headers=session)
        assert page.status_code == 200, (path, page.text[:500])
        assert page.headers["content-security-policy"] == CSP
        assert "script-src 'self';" in CSP
        assert "unsafe-inline" not in CSP.split("script-src")[1].split(";")[0]
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-frame-options"] == "DENY"
        assert XSS not in page.text, path
        assert XSS_IMG not in page.text, path
        # The only script a page loads is the console's own file.
        assert re.findall(r"<script\b[^>]*>", page.text) in ([], ['<script src="/ui/static/console.js" defer>']), path
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in console.get("/ui/predictions/" + XSS, headers=session).text
    assert "try it &lt;script&gt;" in console.get(f"/ui/deployments/{NAME}/rollout").text
    assert "&lt;img src=&#34;x&#34; data-xss=&#34;1&#34;&gt;" in console.get("/ui").text
    # A name that is not a deployment is a 404 page, the name escaped in it.
    missing = console.get(f"/ui/deployments/{XSS.replace('/', '')}")
    assert missing.status_code == 404
    assert "<script>" not in missing.text


def test_request_data_needs_a_login_and_a_login_needs_an_admin_token(console: ConsoleServer) -> None:
    """Pages with request data send an anonymous browser to the login form (and back after);
    a wrong token, or a form without its nonce, logs nobody in; the session cookie is
    HttpOnly, SameSite=Strict, Secure, scoped to /ui and holds no token; a tampered one is
    no session."""
    for path in PRIVATE:
        page = console.get(path, follow_redirects=False)
        assert page.status_code == 303, path
        assert page.headers["location"].startswith("/ui/login?next=%2Fui%2F"), path
    form = console.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None
    login = cookie_header(stalwart_ui_login=form.cookies["stalwart_ui_login"])
    wrong = console.server.post("/ui/login", data={"token": "not-it", "nonce": nonce.group(1)}, headers=login, follow_redirects=False)
    assert wrong.status_code == 401
    assert "stalwart_ui_session" not in wrong.cookies
    forged = console.server.post("/ui/login", data={"token": TOKEN, "nonce": "guess"}, headers=login, follow_redirects=False)
    assert forged.status_code == 403
    assert "stalwart_ui_session" not in forged.cookies
    offsite = console.server.post("/ui/login", data={"token": TOKEN, "nonce": nonce.group(1), "next": "https://evil.example/"},
                                  headers=login, follow_redirects=False)
    assert offsite.status_code == 303
    assert offsite.headers["location"] == "/ui?done=login"
    cookie = next(c for c in offsite.headers.get_list("set-cookie") if c.startswith("stalwart_ui_session="))
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure"} <= set(attributes)
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/ui"
    assert TOKEN not in cookie
    session = console.login()
    assert console.get(PRIVATE[1], headers=session, follow_redirects=False).status_code == 200
    value = session["Cookie"].split("=", 1)[1]
    tampered = cookie_header(stalwart_ui_session=value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert console.get(PRIVATE[1], headers=tampered, follow_redirects=False).status_code == 303


def test_actions_without_a_session_or_its_csrf_token_change_nothing(console: ConsoleServer) -> None:
    """A rollback posted without a session is a 401; with a session but no CSRF token, a
    wrong one, or from another origin's page, a 403; the rollout runs on through all of them."""
    session = console.login()
    csrf = console.csrf(session)
    refused = [
        console.server.post(ROLLBACK, data={"csrf": csrf}, follow_redirects=False),
        console.server.post(ROLLBACK, data={"reason": "no csrf"}, headers=session, follow_redirects=False),
        console.server.post(ROLLBACK, data={"csrf": csrf[::-1]}, headers=session, follow_redirects=False),
        console.server.post(ROLLBACK, data={"csrf": csrf}, headers={**session, "Origin": "https://evil.example"}, follow_redirects=False),
    ]
    assert [r.status_code for r in refused] == [401, 403, 403, 403]
    # A bearer token is the API's way in, not the console's.
    bearer = console.server.post(ROLLBACK, data={"csrf": csrf}, headers={"Authorization": f"Bearer {TOKEN}"}, follow_redirects=False)
    assert bearer.status_code == 401
    assert console.rollout()["state"] == "running"
    assert not [e for e in console.registry.events(limit=None) if e["action"] == "rollout.rollback"]


def test_actions_go_through_the_admin_commands_and_the_audit_log(console: ConsoleServer) -> None:
    """Pause, resume and promote from the console move the rollout as the API does, each
    recorded under the token's name; invalidating a feature set and activating a schema
    revision too; a bad action or revision is a clear 4xx page."""
    session = console.login()
    csrf = console.csrf(session)
    base = f"/ui/deployments/{NAME}/rollout"
    back = f"/ui/deployments/{NAME}?since=1h"
    paused = console.server.post(f"{base}/pause", data={"csrf": csrf, "reason": "look closer", "back": back},
                                 headers=session, follow_redirects=False)
    assert paused.status_code == 303
    assert paused.headers["location"] == f"{back}&done=pause"
    assert (console.rollout()["state"], console.rollout()["reason"]) == ("paused", "look closer")
    assert "The rollout is paused" in console.get(paused.headers["location"], headers=session).text
    assert console.server.post(f"{base}/resume", data={"csrf": csrf}, headers=session, follow_redirects=False).status_code == 303
    assert console.rollout()["state"] == "running"
    nothing = console.server.post(f"{base}/explode", data={"csrf": csrf}, headers=session)
    assert nothing.status_code == 404
    assert "use one of pause, resume, promote, rollback" in nothing.text
    assert console.server.post(f"{base}/promote", data={"csrf": csrf, "back": "https://evil.example/"}, headers=session,
                               follow_redirects=False).headers["location"] == f"{base}?done=promote"
    assert console.rollout()["state"] == "promoted"
    again = console.server.post(f"{base}/rollback", data={"csrf": csrf}, headers=session)
    assert again.status_code == 409, again.text

    invalidated = console.server.post("/ui/features/card_stats/invalidate", data={"csrf": csrf}, headers=session, follow_redirects=False)
    assert invalidated.status_code == 303
    assert console.server.post("/ui/features/nope/invalidate", data={"csrf": csrf}, headers=session).status_code == 404

    registry = console.registry
    schema = registry.schemas.active("scorer", 1)
    assert schema is not None
    registry.schemas.attach("scorer", 1, schema.schema, note="edited")  # revision 2, now active
    activated = console.server.post("/ui/models/scorer/1/schemas/1/activate", data={"csrf": csrf}, headers=session, follow_redirects=False)
    assert activated.status_code == 303
    active = registry.schemas.active("scorer", 1)
    assert active is not None
    assert active.revision == 1
    assert console.server.post("/ui/models/scorer/1/schemas/9/activate", data={"csrf": csrf}, headers=session).status_code == 404

    actors = {e["action"]: e["actor"] for e in registry.events(limit=None)}
    for action in ("rollout.pause", "rollout.resume", "rollout.promote", "features.invalidate", "schema.activate"):
        assert actors.get(action) == "admin", (action, actors)


def test_prediction_filters_pick_records_and_refuse_bad_values_by_name(console: ConsoleServer) -> None:
    """Filtering by variant shows that variant's records only, by status and degradation
    too; a filter that does not read is a 400 page naming it, never a 500."""
    session = console.login()
    for query, field in [("status=abc", "status"), ("degraded=maybe", "degraded"), ("variant=%3Cb%3E", "variant"),
                         ("limit=0", "limit"), ("since=yesterday", "since")]:
        page = console.get(f"/ui/deployments/{NAME}/predictions?{query}", headers=session)
        assert page.status_code == 400, (query, page.text)
        assert field in page.text
    canary = console.get(f"/ui/deployments/{NAME}/predictions?variant=canary&limit=500", headers=session).text
    primary = console.get(f"/ui/deployments/{NAME}/predictions?variant=primary&limit=500", headers=session).text
    rows = lambda text: re.findall(r'<tr class="status-ok">', text)  # noqa: E731 - a one-line reader
    assert rows(canary)
    assert rows(primary)
    assert len(rows(canary)) + len(rows(primary)) == 120
    assert "No record passes these filters" in console.get(f"/ui/deployments/{NAME}/predictions?status=500", headers=session).text
    assert "No record passes these filters" in console.get(f"/ui/deployments/{NAME}/predictions?degraded=yes", headers=session).text


def test_the_console_can_be_off_or_all_behind_a_login(settings: Settings) -> None:
    """STALWART_UI=false serves no /ui and keeps no live numbers; with
    STALWART_UI_REQUIRE_TOKEN=true every page, the overview included, asks for a login."""
    off = create_app(settings.model_copy(update={"ui": False}), project=Project())
    assert off.state.live is None
    with start_server(settings, app=off) as server:
        assert server.get("/ui").status_code == 404
    locked = settings.model_copy(update={"ui_require_token": True})
    with start_server(locked, app=create_app(locked, project=Project())) as server:
        answer = server.get("/ui", follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/login?next=%2Fui"
        assert server.get("/ui/login").status_code == 200
