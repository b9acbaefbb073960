"""The Open Inference Protocol surface, through a real uvicorn server."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.servers import LiveServer


def _infer_body(x: np.ndarray[Any, Any], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": x.ravel().tolist()}],
        **extra,
    }


def test_infer_latest_version_matches_in_process_model(served: LiveServer, boosted: Any, cancer: dict[str, Any]) -> None:
    """Without a version the latest registered version answers, with the model's own numbers."""
    x = cancer["x_test"][:5]
    response = served.post("/v2/models/breast-cancer/infer", json=_infer_body(x, id="abc"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "2"
    assert body["id"] == "abc"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"]["data"] == boosted.predict(x).tolist()
    proba = np.asarray(outputs["predict_proba"]["data"]).reshape(outputs["predict_proba"]["shape"])
    np.testing.assert_allclose(proba, boosted.predict_proba(x))


def test_infer_explicit_version_and_output_selection(served: LiveServer, logistic: Any, cancer: dict[str, Any]) -> None:
    """A version in the path and an `outputs` list select exactly what is computed."""
    x = cancer["x_test"][:2]
    response = served.post(
        "/v2/models/breast-cancer/versions/1/infer", json=_infer_body(x, outputs=[{"name": "predict"}])
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "1"
    assert [o["name"] for o in body["outputs"]] == ["predict"]
    assert body["outputs"][0]["data"] == logistic.predict(x).tolist()


def test_request_id_is_echoed_or_generated(served: LiveServer, cancer: dict[str, Any]) -> None:
    """Every response carries X-Request-ID: the client's when sent, a fresh one otherwise."""
    given = served.get("/v2/health/live", headers={"X-Request-ID": "trace-123"})
    assert given.headers["x-request-id"] == "trace-123"
    fresh = served.get("/v2/health/live")
    assert len(fresh.headers["x-request-id"]) == 32


def test_model_metadata_and_readiness(served: LiveServer) -> None:
    """Metadata reports the signature; a loaded version is ready."""
    meta = served.get("/v2/models/breast-cancer").json()
    assert meta["name"] == "breast-cancer"
    assert meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}]
    assert {o["name"] for o in meta["outputs"]} == {"predict", "predict_proba"}
    assert served.get("/v2/models/breast-cancer/ready").json() == {"name": "breast-cancer", "ready": True}
    assert served.get("/v2").json()["name"] == "stalwart"
    assert served.get("/v2/health/ready").status_code == 200


def test_bad_requests_get_4xx_naming_the_field(served: LiveServer, cancer: dict[str, Any]) -> None:
    """Every mistake a client can make is a 4xx whose JSON names the field at fault."""
    x = cancer["x_test"][:1]
    good = _infer_body(x)
    cases: list[tuple[str, Any, int, str]] = [
        ("/v2/models/nope/infer", good, 404, "model 'nope' is not registered"),
        ("/v2/models/breast-cancer/versions/9/infer", good, 404, "has no version 9"),
        ("/v2/models/breast-cancer/versions/x/infer", good, 404, "has no version x"),
        ("/v2/models/breast-cancer/infer", {"inputs": "no"}, 400, "inputs"),
        ("/v2/models/breast-cancer/infer", {**good, "inputs": [{**good["inputs"][0], "shape": [1, 29]}]}, 400, "inputs[0].data"),
        ("/v2/models/breast-cancer/infer", {**good, "inputs": [{**good["inputs"][0], "datatype": "FP32"}]}, 400, "inputs[0].datatype"),
        ("/v2/models/breast-cancer/infer", {**good, "inputs": [{**good["inputs"][0], "name": "x"}]}, 400, "inputs[0].name"),
        ("/v2/models/breast-cancer/infer", {**good, "outputs": [{"name": "nope"}]}, 400, "outputs[0].name"),
        ("/v2/models/breast-cancer/infer", {**good, "inputs": [{**good["inputs"][0], "datatype": "WAT"}]}, 400, "inputs[0].datatype"),
    ]
    for path, body, status, fragment in cases:
        response = served.post(path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert fragment in response.json()["error"], response.json()
    not_json = served.post("/v2/models/breast-cancer/infer", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert "not valid JSON" in not_json.json()["error"]


def test_body_over_the_limit_is_413(settings: Any, registry: Any, logistic: Any, cancer: dict[str, Any]) -> None:
    """A body over STALWART_MAX_BODY_BYTES is refused with 413, declared or streamed."""
    from tests.servers import start_server

    registry.register("breast-cancer", logistic, sample=cancer["x_train"][:5])
    small = settings.model_copy(update={"max_body_bytes": 1000})
    with start_server(small, registry) as server:
        response = server.post("/v2/models/breast-cancer/infer", content=b"x" * 5000)
        assert response.status_code == 413
        assert "limit of 1000 bytes" in response.json()["error"]

        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b"y" * 500

        streamed = server.post("/v2/models/breast-cancer/infer", content=chunks())
        assert streamed.status_code == 413


def test_metrics_count_requests_by_model_version_endpoint_status(served: LiveServer, cancer: dict[str, Any]) -> None:
    """/metrics counts requests with bounded labels; unknown models are not label values."""
    served.post("/v2/models/breast-cancer/infer", json=_infer_body(cancer["x_test"][:1]))
    served.post("/v2/models/made-up-name/infer", json=_infer_body(cancer["x_test"][:1]))
    text = served.get("/metrics").text
    assert 'stalwart_requests_total{endpoint="/v2/models/{model}/infer",model="breast-cancer",status="200",version="2"} 1.0' in text
    assert "made-up-name" not in text
    assert "stalwart_models_loaded 2.0" in text or "stalwart_models_loaded 1.0" in text
    assert "stalwart_model_load_seconds_count" in text
