"""Who can call what (docs/security.md): every route of the server is classified here, as
open (the data plane, health, metadata, metrics, read-only state), guarded (control-plane
changes and data-bearing reads, which need an admin bearer token), or the console's (pages
anyone may see, pages with request data behind its login, actions behind its login). A
route added without being classified fails the first test; every guarded one refuses a
missing, wrong or malformed token with 401 and changes nothing; without a console session,
a login page sends the browser to the login form and an action is refused."""

from __future__ import annotations

import re

from stalwart.serving.app import create_app
from tests.servers import start_server
from tests.serving.conftest import FraudCopy

OPEN = {
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{model}"),
    ("GET", "/v2/models/{model}/ready"),
    ("GET", "/v2/models/{model}/versions/{version}"),
    ("GET", "/v2/models/{model}/versions/{version}/ready"),
    ("POST", "/v2/models/{model}/infer"),
    ("POST", "/v2/models/{model}/versions/{version}/infer"),
    ("GET", "/v1/deployments"),
    ("GET", "/v1/deployments/{name}"),
    ("GET", "/v1/deployments/{name}/health"),
    ("POST", "/v1/deployments/{name}/predict"),
    ("GET", "/v1/deployments/{name}/routes"),
    ("GET", "/v1/deployments/{name}/rollout"),
    ("GET", "/v1/resources"),
}
GUARDED = {
    ("POST", "/v1/sources/{name}/rows"),
    ("POST", "/v1/features/{name}/invalidate"),
    ("POST", "/v1/feedback"),
    ("PUT", "/v1/deployments/{name}/routes"),
    ("POST", "/v1/deployments/{name}/rollout"),
    ("POST", "/v1/deployments/{name}/rollout/{action}"),
    ("GET", "/v1/predictions/{request_id}"),
    ("GET", "/v1/deployments/{name}/monitoring"),
}
CONSOLE_OPEN = {
    ("GET", "/ui"),
    ("GET", "/ui/live"),
    ("GET", "/ui/login"),
    ("POST", "/ui/login"),
    ("GET", "/ui/deployments/{name}"),
    ("GET", "/ui/deployments/{name}/live"),
    ("GET", "/ui/deployments/{name}/rollout"),
    ("GET", "/ui/deployments/{name}/shadows"),
    ("GET", "/ui/models/{name}"),
    ("GET", "/ui/report.css"),
}
CONSOLE_LOGIN = {  # request data: the login form first
    ("GET", "/ui/deployments/{name}/monitoring"),
    ("GET", "/ui/deployments/{name}/predictions"),
    ("GET", "/ui/predictions/{request_id:path}"),
}
CONSOLE_ACTIONS = {  # changes: refused without a session
    ("POST", "/ui/logout"),
    ("POST", "/ui/deployments/{name}/rollout/{action}"),
    ("POST", "/ui/models/{name}/{version}/schemas/{revision}/activate"),
    ("POST", "/ui/features/{name}/invalidate"),
}
PARAMS = {"name": "fraud", "model": "fraud", "version": "1", "revision": "1", "action": "pause", "request_id": "0123456789abcdef"}
BAD_HEADERS = [{}, {"Authorization": "Bearer not-the-token"}, {"Authorization": "Basic {token}"}, {"Authorization": "Bearer"}, {"Authorization": "Token {token}"}]


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PARAMS[m.group(1)], path)


def test_every_route_is_classified_open_or_guarded(fraud_copy: FraudCopy) -> None:
    """The server's routes are exactly the open and the guarded ones listed here: a new
    route must be classified (and, if guarded, call BearerAuth.require) before it ships."""
    app = create_app(fraud_copy.settings)
    routes = {(method, route.path) for route in app.routes for method in (getattr(route, "methods", None) or ()) if method != "HEAD"}
    known = OPEN | GUARDED | CONSOLE_OPEN | CONSOLE_LOGIN | CONSOLE_ACTIONS
    assert routes == known, {"unclassified": routes - known, "gone": known - routes}


def test_guarded_routes_refuse_every_bad_token_and_open_ones_ask_for_none(fraud_copy: FraudCopy) -> None:
    """Each guarded route, without the admin token, with another, with another scheme or an
    empty one: 401 in JSON with ``WWW-Authenticate: Bearer``, the token never echoed, and no
    audit event written. No open route answers 401 without a token. Without a console
    session, its request-data pages send the browser to the login form (303) and its
    actions answer 401."""
    settings = fraud_copy.settings
    token = settings.resolved_admin_token()
    body = {"rows": [], "items": [], "canary": "fraud:1", "entities": [{"card_id": 1001}], "values": [{"amount": 1.0, "merchant_category": "fuel"}]}
    with start_server(settings, app=create_app(settings)) as server:
        audited = fraud_copy.sql("SELECT COUNT(*) FROM audit_events")[0][0]  # the start's own event included
        for method, path in sorted(GUARDED):
            for headers in BAD_HEADERS:
                filled = {k: v.format(token=token) for k, v in headers.items()}
                response = server.client.request(method, _concrete(path), headers=filled, json=body)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "token" in response.json()["error"]
                assert token not in response.text
        for method, path in sorted(OPEN | CONSOLE_OPEN - {("POST", "/ui/login")}):
            response = server.client.request(method, _concrete(path), json=body if method == "POST" else None)
            assert response.status_code != 401, (method, path, response.text)
            assert not response.headers.get("location", "").startswith("/ui/login"), (method, path)
        for method, path in sorted(CONSOLE_LOGIN):
            response = server.client.request(method, _concrete(path), follow_redirects=False)
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/ui/login?next="), (method, path)
        for method, path in sorted(CONSOLE_ACTIONS):
            response = server.client.request(method, _concrete(path), data={"csrf": "x"}, headers={"Origin": server.url})
            assert response.status_code == 401, (method, path, response.status_code)
        assert fraud_copy.sql("SELECT COUNT(*) FROM audit_events")[0][0] == audited
