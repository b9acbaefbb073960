"""A declared canary through a real server: a sticky share of entities is answered by the
canary's model version, the answer says which variant answered, the routing key header
overrides the entity, and what each variant served is profiled under its own name."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import pytest

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.hashing import canonical_json
from stalwart.monitoring.live_profiles import merged_profile
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from stalwart.rollout.routing import assign
from stalwart.serving.app import create_app
from tests.faults import Switchable, set_mode
from tests.servers import start_server

SOURCE = RequestSource("txn", fields={"amount": "float"})
SAMPLE = pd.DataFrame({"amount": [float(i) for i in range(60)]})


def _register(registry: Registry) -> None:
    set_mode("canaried", "ok")
    registry.register("canaried", Switchable("canaried", 1.0), sample=SAMPLE)  # v1: the primary
    registry.register("canaried", Switchable("canaried", 2.0), sample=SAMPLE)  # v2: the canary


def _predict(server: Any, entity: int, headers: dict[str, str] | None = None) -> tuple[str, int, float]:
    body = {"entities": [{"id": entity}], "values": [{"amount": 10.0}]}
    response = server.post("/v1/deployments/payments/predict", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert response.headers["X-Stalwart-Variant"] == answer["variant"]
    return answer["variant"], answer["model"]["version"], answer["predictions"][0]["predict"]


def test_a_canary_answers_a_sticky_share_of_entities(settings: Settings, registry: Registry) -> None:
    _register(registry)
    deployment = Deployment(
        "payments", model="canaried:1", canary="canaried:2", canary_weight=0.3, features=[SOURCE.amount]
    )
    since = time.time()
    with start_server(settings, app=create_app(settings, registry=registry, project=Project.of(deployment, SOURCE))) as server:
        seen = {entity: _predict(server, entity) for entity in range(200)}
        # Which variant answers is the documented hash of the entity key under the canary's salt.
        for entity, (variant, version, score) in seen.items():
            expected = assign(canonical_json({"id": entity}), "payments:canaried:2", 0.3)
            assert variant == ("canary" if expected else "primary")
            assert (version, score) == ((2, 20.0) if expected else (1, 10.0))
        share = sum(v == "canary" for v, _, _ in seen.values()) / len(seen)
        assert 0.18 < share < 0.42
        # Sticky: the same entity gets the same variant again.
        assert all(_predict(server, entity)[0] == seen[entity][0] for entity in range(40))
        # The routing key header decides over the entity: one key, one variant, any entity.
        keyed = {_predict(server, entity, {"X-Stalwart-Routing-Key": "user-42"})[0] for entity in range(30)}
        assert len(keyed) == 1
        too_long = server.post(
            "/v1/deployments/payments/predict",
            json={"entities": [{"id": 1}], "values": [{"amount": 1.0}]},
            headers={"X-Stalwart-Routing-Key": "k" * 300},
        )
        assert too_long.status_code == 400
        assert too_long.json()["field"] == "X-Stalwart-Routing-Key"
    span = {"since": since - 60, "until": time.time() + 60}
    canary_rows = merged_profile(registry.db, "payments", variant="canary", **span).rows
    primary_rows = merged_profile(registry.db, "payments", variant="primary", **span).rows
    assert canary_rows > 0
    assert primary_rows > 0
    assert canary_rows + primary_rows == 200 + 40 + 30


def test_canary_declarations_are_checked_where_declared() -> None:
    with pytest.raises(ConfigError, match=r"deployment 'p' canary_weight: 1\.5 must be a number from 0 to 1"):
        Deployment("p", model="m", canary="m:2", canary_weight=1.5)
    with pytest.raises(ConfigError, match=r"deployment 'p' canary_weight: 0\.1 is set but no canary model is named"):
        Deployment("p", model="m", canary_weight=0.1)
    with pytest.raises(ConfigError, match="deployment 'p' canary"):
        Deployment("p", model="m", canary="m:two")
