"""The one data plane under both entrypoints: a tap sees every request's outcome, from
/v2 and /v1 alike, answered or not, with what the model saw and how long each stage took."""

from __future__ import annotations

import pandas as pd

from stalwart.config import Settings
from stalwart.errors import RequestError
from stalwart.project import Deployment, Project, RequestSource
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from stalwart.serving.dataplane import Outcome
from tests.faults import Switchable, set_mode
from tests.servers import start_server


def test_the_tap_sees_every_request_on_both_entrypoints(settings: Settings, registry: Registry) -> None:
    """One tap, plugged in once, sees /v2 and /v1 requests, successes and failures, with the
    request id, the variant, the inputs as the model saw them, outputs and timings."""
    txn = RequestSource("txn", fields={"x": "float"})
    set_mode("tapped", "ok")
    registry.register("tapped", Switchable("tapped", 2.0), sample=pd.DataFrame({"x": [float(i) for i in range(60)]}))
    project = Project.of(Deployment("scores", model="tapped", features=[txn.x]), txn)
    seen: list[Outcome] = []
    app = create_app(settings, registry=registry, project=project, tap=seen.append)
    with start_server(settings, app=app) as server:
        v1 = server.post("/v1/deployments/scores/predict", json={"entities": [{"id": 1}], "values": [{"x": 3.0}]}, headers={"X-Request-ID": "v1-ok"})
        v2 = server.post("/v2/models/tapped/infer", json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [4.0]}]}, headers={"X-Request-ID": "v2-ok"})
        bad = server.post("/v2/models/tapped/infer", json={"inputs": []}, headers={"X-Request-ID": "v2-bad"})
    assert (v1.status_code, v2.status_code, bad.status_code) == (200, 200, 400)
    assert v1.json()["variant"] == "primary"
    by_id = {o.info.request_id: o for o in seen}
    assert set(by_id) == {"v1-ok", "v2-ok", "v2-bad"}

    first = by_id["v1-ok"]
    assert (first.entrypoint, first.deployment, first.variant, first.error) == ("/v1", "scores", "primary", None)
    assert first.prediction is not None
    assert first.prediction.predictions == [{"predict": 6.0}]
    assert first.exchange is not None
    assert first.exchange.inputs["x"].tolist() == [3.0]
    assert first.exchange.timings.features_ms is not None
    assert first.exchange.timings.model_ms is not None

    second = by_id["v2-ok"]
    assert (second.entrypoint, second.deployment, second.error) == ("/v2", None, None)
    assert second.inferred is not None
    assert second.inferred.outputs["predict"].tolist() == [8.0]
    assert second.exchange is not None
    assert second.exchange.timings.decode_ms is not None

    failed = by_id["v2-bad"]
    assert isinstance(failed.error, RequestError)
    assert failed.inferred is None
