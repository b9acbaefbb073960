"""Model calls on the server's worker threads."""

from __future__ import annotations

import os

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
