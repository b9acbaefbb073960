"""/metrics says which routes each replica serves: the canary's weight, the routes'
revision (what tells a replica lagging behind a change) and the model behind each variant,
following a change made through the API within a poll."""

from __future__ import annotations

import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from stalwart.config import Settings
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from tests.faults import Switchable, set_mode
from tests.servers import LiveServer, start_server
from tests.serving.conftest import poll

SOURCE = RequestSource("txn", fields={"amount": "float"})
SAMPLE = pd.DataFrame({"amount": [float(i) for i in range(60)]})


def _routes(server: LiveServer) -> dict[str, object]:
    """The route series of deployment ``payments``: weight, revision and {variant: model}."""
    out: dict[str, object] = {"variants": {}}
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            if sample.labels.get("deployment") != "payments":
                continue
            if sample.name == "stalwart_route_canary_weight":
                out["weight"] = sample.value
            elif sample.name == "stalwart_route_revision":
                out["revision"] = int(sample.value)
            elif sample.name == "stalwart_route_variant":
                assert sample.value == 1.0
                out["variants"][sample.labels["variant"]] = sample.labels["model"]  # type: ignore[index]
    return out


def test_route_series_follow_a_change_of_routes(settings: Settings, registry: Registry) -> None:
    set_mode("route-metrics", "ok")
    registry.register("scorer", Switchable("route-metrics", 1.0), sample=SAMPLE)
    registry.register("scorer", Switchable("route-metrics", 2.0), sample=SAMPLE)
    settings = settings.model_copy(update={"routes_poll_seconds": 0.1})
    project = Project.of(Deployment("payments", model="scorer:1", features=[SOURCE.amount]), SOURCE)
    token = {"Authorization": f"Bearer {settings.resolved_admin_token()}"}
    with start_server(settings, app=create_app(settings, registry=registry, project=project)) as server:
        start = _routes(server)
        assert start["weight"] == 0.0
        assert start["variants"] == {"primary": "scorer:1"}

        put = server.client.put("/v1/deployments/payments/routes", json={"canary": "scorer:2", "canary_weight": 0.25}, headers=token)
        assert put.status_code == 200, put.text
        revision = put.json()["revision"]
        assert revision != start["revision"]
        moved = poll(lambda: (r := _routes(server))["revision"] == revision and r, 10)
        assert moved, _routes(server)
        assert moved["weight"] == 0.25
        assert moved["variants"] == {"primary": "scorer:1", "canary": "scorer:2"}

        put = server.client.put("/v1/deployments/payments/routes", json={"remove_canary": True}, headers=token)
        assert put.status_code == 200, put.text
        removed = poll(lambda: (r := _routes(server))["revision"] == put.json()["revision"] and r, 10)
        assert removed, _routes(server)
        # The canary's series is gone, not left at its last value.
        assert removed["weight"] == 0.0
        assert removed["variants"] == {"primary": "scorer:1"}
