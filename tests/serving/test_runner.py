"""Model calls on the server's worker threads."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import sklearn.ensemble  # noqa: F401 - loads scikit-learn's OpenMP runtime, as a served model would

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from tests.models import OpenMPThreads
from tests.servers import start_server


def test_model_calls_run_with_one_openmp_thread_each(settings: Settings, registry: Registry) -> None:
    """The server runs calls side by side, so each gets one OpenMP thread: an estimator
    that would start a team of threads per call (HistGradientBoosting) cannot make the
    workers' teams starve each other, batching or not."""
    assert (os.cpu_count() or 1) > 1, "on one core an OpenMP team has one thread anyway"
    registry.register("threads", OpenMPThreads(), sample=np.zeros((2, 1)))
    body = {"inputs": [{"name": "input-0", "shape": [1, 1], "datatype": "FP64", "data": [0.0]}]}
    for batching in (True, False):
        app = create_app(settings.model_copy(update={"batching": batching}), registry=registry)
        with start_server(settings, app=app) as server:
            response = server.post("/v2/models/threads/infer", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"] == [1]


def test_waiting_for_a_worker_thread_counts_as_queue_wait(settings: Settings, registry: Registry) -> None:
    """Without batching, calls beyond the worker threads queue in front of them: the
    deployment's shedder sees that wait (service starts when a worker picks the call up),
    so a queue-wait budget turns new requests away while the queue stands."""
    import pandas as pd

    from stalwart.project import Deployment, Project, RequestSource
    from tests.faults import Switchable, set_mode

    txn = RequestSource("txn", fields={"x": "float"})
    set_mode("queued", "slow", seconds=0.5)
    registry.register("queued", Switchable("queued"), sample=pd.DataFrame({"x": [float(i) for i in range(20)]}))
    shedding = {"max_in_flight": None, "max_queue_wait": "150ms", "priority_shares": {"normal": 1.0}}  # wide enough for a busy machine to send the first wave
    project = Project.of(Deployment("queued", model="queued", features=[txn.x], shedding=shedding, guard={"timeout": {"timeout_duration": "10s"}}), txn)
    app = create_app(settings.model_copy(update={"batching": False}), registry=registry, project=project)
    workers = min(8, (os.cpu_count() or 1) + 2)  # the server's model worker threads
    body = {"entities": [{"id": 1}], "values": [{"x": 1.0}]}
    with start_server(settings, app=app) as server, ThreadPoolExecutor(2 * workers) as pool:
        calls = [pool.submit(server.client.post, "/v1/deployments/queued/predict", json=body) for _ in range(2 * workers)]
        time.sleep(0.3)  # the second wave has been waiting 0.3 s for a worker
        health = server.get("/v1/deployments/queued/health").json()
        late = server.post("/v1/deployments/queued/predict", json=body)
        assert [c.result().status_code for c in calls] == [200] * (2 * workers)
    assert health["shedding"]["queue_wait"] >= 0.2, health["shedding"]
    assert late.status_code == 503, late.text
    assert "queue" in late.json()["error"]
