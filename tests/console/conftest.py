"""A real server for the console's tests: one deployment with a running rollout (a canary
at a fixed weight: its plan never steps), a shadow, a cached feature set, some traffic in the
prediction log and the live profiles, and data strings that carry markup (a deployment's
and a model's description, a rollout's reason, a request id), which every page must show
as text."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr

from stalwart.config import Settings
from stalwart.monitoring.sinks import open_store
from stalwart.project import (
    Deployment,
    Entity,
    FeatureSet,
    Latest,
    Project,
    RequestSource,
    SqlSource,
)
from stalwart.registry import Registry
from stalwart.rollout.controller import SETTLE_SECONDS
from stalwart.serving.app import create_app
from tests.faults import Switchable, set_mode
from tests.servers import LiveServer, start_server

NAME = "payments"
TOKEN = "console-test-token-0123456789"
XSS = "<script>window.__xss=1</script>"
XSS_IMG = '<img src="x" data-xss="1">'
TXN = RequestSource("txn", fields={"amount": "float"})
SAMPLE = pd.DataFrame({"amount": [float(i) for i in range(60)]})
CARD = Entity("card", keys=["card_id"])
CARD_STATS = FeatureSet(
    "card_stats", entity=CARD, source=SqlSource("cards", table="cards", entity=CARD, timestamp="ts"),
    cache={"ttl": "1m"}, features=[Latest("last_amount", column="amount", max_age="30d", default=0.0)],
)
# Looks every half second, never a step: the canary stays at 30% until someone acts.
PLAN: dict[str, Any] = {"steps": [0.3, 0.6], "min_seconds": 3600, "min_requests": 1_000_000, "look_seconds": 0.5}


@dataclass
class ConsoleServer:
    """The server, its settings and registry, and what the fixture set up."""

    server: LiveServer
    settings: Settings
    registry: Registry
    rollout_id: int

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.server.get(path, **kwargs)

    def rollout(self) -> dict[str, Any]:
        body: dict[str, Any] = self.server.get(f"/v1/deployments/{NAME}/rollout?events=0").json()["rollout"]
        return body

    def login(self) -> dict[str, str]:
        """Log in through the form as a browser would; the headers that send its session
        cookie afterwards. (httpx's jar keeps Secure cookies for https only, so the cookies
        go by hand, in a ``Cookie`` header.)"""
        form = self.server.get("/ui/login")
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
        assert nonce is not None, form.text
        answer = self.server.post(
            "/ui/login", data={"token": TOKEN, "nonce": nonce.group(1), "next": "/ui"},
            headers=cookie_header(stalwart_ui_login=form.cookies["stalwart_ui_login"]), follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        return cookie_header(stalwart_ui_session=answer.cookies["stalwart_ui_session"])

    def csrf(self, session: dict[str, str], page: str = f"/ui/deployments/{NAME}") -> str:
        """The CSRF token in the forms of ``page`` as the logged-in ``session`` sees it."""
        text = self.server.get(page, headers=session).text
        found = re.search(r'name="csrf" value="([^"]+)"', text)
        assert found is not None, "no form with a CSRF token on the page"
        return found.group(1)


def cookie_header(**cookies: str) -> dict[str, str]:
    """A ``Cookie`` header sending ``cookies``."""
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in cookies.items())}


def traffic(server: LiveServer, n: int, *, request_id: str | None = None) -> None:
    """``n`` predictions with fresh entities (so both arms see some); the last one with
    ``request_id`` as its ``X-Request-ID``, when given."""
    for i in range(n):
        headers = {"X-Request-ID": request_id} if request_id is not None and i == n - 1 else {}
        answer = server.post(f"/v1/deployments/{NAME}/predict", json={"entities": [{"id": i}], "values": [{"amount": float(i % 50)}]}, headers=headers)
        assert answer.status_code == 200, answer.text


@contextmanager
def _console(settings: Settings, registry: Registry, *, judged: bool) -> Iterator[ConsoleServer]:
    """The server, with 120 requests served and a rollout of scorer:2 running at 30%;
    ``judged``: the requests come after the controller's settling time, so its looks
    count them."""
    settings = settings.model_copy(update={
        "admin_token": SecretStr(TOKEN), "rollout_lag_seconds": 0.2, "routes_poll_seconds": 0.2,
        "shadow_flush_seconds": 0.5, "live_profiles_flush_seconds": 0.2,
    })
    for name in ("console-primary", "console-canary", "console-shadow"):
        set_mode(name, "ok")
    registry.register("scorer", Switchable("console-primary", 1.0), sample=SAMPLE, description=f"the primary {XSS}")
    registry.register("scorer", Switchable("console-canary", 1.1), sample=SAMPLE, tags={"note": XSS_IMG})
    registry.register("scorer", Switchable("console-shadow", 0.9), sample=SAMPLE)
    deployment = Deployment(
        NAME, model="scorer:1", features=[TXN.amount], rollout=PLAN, description=f"Scores payments {XSS_IMG}",
        shadows={"next": "scorer:3"},
    )
    app = create_app(settings, registry=registry, project=Project.of(deployment, TXN, CARD_STATS))
    with start_server(settings, app=app) as server:
        started = server.post(
            f"/v1/deployments/{NAME}/rollout", json={"canary": "scorer:2", "reason": f"try it {XSS}"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert started.status_code == 201, started.text
        # The controller judges requests from SETTLE_SECONDS after the step began (every
        # replica has polled the new routes by then); a routes poll is enough to serve.
        time.sleep(SETTLE_SECONDS + 0.2 if judged else 3 * settings.routes_poll_seconds)
        traffic(server, 120, request_id=XSS)
        app.state.live_profiles.flush()
        # The log delivers a chain's records in order: once the last is readable, all are.
        store = open_store(settings)
        assert store is not None
        try:
            deadline = time.monotonic() + 10
            while store.get(XSS) is None:
                assert time.monotonic() < deadline, "the prediction log did not store the requests within 10 s"
                time.sleep(0.05)
        finally:
            store.close()
        yield ConsoleServer(server, settings, registry, started.json()["rollout"]["id"])


@pytest.fixture
def console(settings: Settings, registry: Registry) -> Iterator[ConsoleServer]:
    with _console(settings, registry, judged=False) as server:
        yield server


@pytest.fixture
def judged_console(settings: Settings, registry: Registry) -> Iterator[ConsoleServer]:
    with _console(settings, registry, judged=True) as server:
        yield server
