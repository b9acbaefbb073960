"""POST /v1/deployments/{name}/predict on the fraud example, through a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stalwart.config import Settings
from stalwart.features import OnlineFeatures
from stalwart.features.readers import make_reader
from stalwart.project import load_project
from stalwart.storage import DatabasePool
from tests.servers import LiveServer, start_server


@pytest.fixture(scope="module")
def fraud_server(fraud_home: dict[str, Any]) -> Any:
    with start_server(fraud_home["settings"]) as server:
        yield server


def _known_card(fraud_home: dict[str, Any]) -> int:
    frame = fraud_home["frame"]
    return int(frame[frame["ts"] > frame["ts"].max() - 86_400]["card_id"].value_counts().index[0])


def test_predict_answers_with_model_version_and_the_features_used(fraud_server: LiveServer, fraud_home: dict[str, Any]) -> None:
    """Entity keys and request values in; predictions, the model version and (on request)
    the very feature vectors the model saw, out."""
    card = _known_card(fraud_home)
    body = {
        "entities": [{"card_id": card}, {"card_id": card}],
        "values": [{"amount": 20.0, "merchant_category": "groceries"}, {"amount": 2000.0, "merchant_category": "electronics"}],
        "return_features": True,
    }
    response = fraud_server.post("/v1/deployments/fraud/predict", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model"] == {"name": "fraud", "version": fraud_home["version"].version}
    assert result["deployment"] == "fraud"
    assert result["request_id"] == response.headers["x-request-id"]
    assert len(result["predictions"]) == 2
    assert set(result["predictions"][0]) == {"predict", "predict_proba"}
    features = result["features"]
    assert [f["amount"] for f in features] == [20.0, 2000.0]
    assert features[0]["tx_count_24h"] == features[1]["tx_count_24h"] > 0
    assert features[1]["risky_category"] == 1.0
    assert features[1]["amount_to_mean_30d"] == pytest.approx(2000.0 / max(features[1]["amount_mean_30d"], 1.0))


def test_served_features_equal_the_online_features_computed_directly(fraud_server: LiveServer, fraud_home: dict[str, Any]) -> None:
    """What the endpoint computes is exactly what the feature definitions give."""
    settings: Settings = fraud_home["settings"]
    project = load_project(fraud_home["root"] / "project.py")
    card = _known_card(fraud_home)
    values = {"amount": 55.5, "merchant_category": "fuel"}
    served = fraud_server.post(
        "/v1/deployments/fraud/predict", json={"entities": [{"card_id": card}], "values": [values], "return_features": True}
    ).json()["features"][0]
    pool = DatabasePool(settings)
    try:
        fs = project.feature_sets["card_activity"]
        online = OnlineFeatures([fs[n] for n in fs.feature_names], {"transactions": make_reader(fs.source, pool)})
        direct = asyncio.run(online.resolve([{"card_id": card}], [values]))
    finally:
        pool.dispose()
    for name, column in direct.columns.items():
        assert served[name] == pytest.approx(float(column[0])), name


def test_unknown_card_uses_declared_defaults(fraud_server: LiveServer) -> None:
    """A card never seen gets each feature's declared default, and a prediction."""
    response = fraud_server.post(
        "/v1/deployments/fraud/predict",
        json={"entities": [{"card_id": 987654321}], "values": [{"amount": 10.0, "merchant_category": "fuel"}], "return_features": True},
    )
    assert response.status_code == 200, response.text
    features = response.json()["features"][0]
    assert features["tx_count_24h"] == 0
    assert features["amount_mean_30d"] == 0.0
    assert features["last_amount"] == 0.0


def test_bad_requests_get_4xx_naming_the_problem(fraud_server: LiveServer) -> None:
    cases = [
        ({"entities": [{"card_id": 1}]}, 400, "values: this deployment needs request values"),
        ({"entities": [{"card_id": 1}], "values": [{"amount": 1.0}]}, 400, "values[0].merchant_category: missing"),
        ({"entities": [{"card_id": 1}], "values": [{"amount": "x", "merchant_category": "a"}]}, 400, "values[0].amount: expected float"),
        ({"entities": [{"card": 1}], "values": [{"amount": 1.0, "merchant_category": "a"}]}, 400, "entities[0]: missing key 'card_id'"),
        ({"entities": "nope"}, 400, "entities"),
        ({"entities": []}, 400, "at least one entity"),
    ]
    for body, status, fragment in cases:
        response = fraud_server.post("/v1/deployments/fraud/predict", json=body)
        assert response.status_code == status, (body, response.text)
        assert fragment in response.json()["error"], response.json()
    missing = fraud_server.post("/v1/deployments/nope/predict", json={"entities": [{"card_id": 1}]})
    assert missing.status_code == 404
    assert "deployment 'nope' does not exist" in missing.json()["error"]


def test_deployment_description_lists_features_and_versions(fraud_server: LiveServer, fraud_home: dict[str, Any]) -> None:
    info = fraud_server.get("/v1/deployments/fraud").json()
    assert info["ready"] is True
    assert info["serving"] == {"name": "fraud", "version": fraud_home["version"].version}
    assert info["entity_keys"] == ["card_id"]
    assert info["request_values"] == {"amount": "float", "merchant_category": "str"}
    names = [f["name"] for f in info["features"]]
    assert names[:2] == ["tx_count_1h", "tx_count_24h"]
    assert names[-1] == "amount"
    listed = fraud_server.get("/v1/deployments").json()["deployments"]
    assert [d["name"] for d in listed] == ["fraud"]


def test_a_changed_feature_definition_is_refused_not_served(fraud_home: dict[str, Any], tmp_path: Path) -> None:
    """If the project's feature set is not the version the model trained on, the
    deployment answers 503 saying so, instead of computing features differently."""
    source = (fraud_home["root"] / "project.py").read_text()
    changed = source.replace('Window("tx_count_1h", agg="count", window="1h")', 'Window("tx_count_1h", agg="count", window="2h")')
    assert changed != source
    project_file = tmp_path / "project.py"
    project_file.write_text(changed)
    settings = fraud_home["settings"].model_copy(update={"project": project_file})
    with start_server(settings) as server:
        response = server.post(
            "/v1/deployments/fraud/predict",
            json={"entities": [{"card_id": 1}], "values": [{"amount": 1.0, "merchant_category": "a"}]},
        )
        assert response.status_code == 503
        assert "trained on feature set 'card_activity' version" in response.json()["error"]
        assert server.get("/v1/deployments/fraud").json()["ready"] is False


def test_the_example_model_learned_the_fraud_signal(fraud_home: dict[str, Any]) -> None:
    """The generator's fraud shows in windowed features: a model trained on them ranks
    held-out fraud far above chance."""
    assert fraud_home["metrics"]["roc_auc"] > 0.9
    assert np.isfinite(fraud_home["metrics"]["training_set_seconds"])
