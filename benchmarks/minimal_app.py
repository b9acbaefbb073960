"""The yardstick: the smallest honest Starlette endpoint that serves the same model.

``async def`` parses the JSON with the standard library, calls the requested methods
(``predict`` and ``predict_proba`` when the body names none, as Stalwart does) inline on
the event loop (no thread hop, no middleware, no logging, no metrics) and answers JSON. It
answers the same paths and body as Stalwart's ``/v2`` endpoint (with and without a
version: without, the latest registered) so one wrk script drives both. It serves every
version registered in ``BENCH_HOME``, or, when ``BENCH_MODEL_FILE`` names a joblib file,
that estimator alone as version 1 (then nothing of Stalwart is imported, so its memory is
the endpoint's own). ``/no-model/...`` does the same without calling the model: the ceiling that HTTP and
JSON alone set on this machine. Run by uvicorn exactly as ``stalwart serve`` is run::

    BENCH_HOME=... uvicorn --factory benchmarks.minimal_app:create_app
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.models import MODEL, load_estimator, registered_versions

# What Stalwart computes when a request names no outputs: every output of the signature.
DEFAULT_OUTPUTS = ({"name": "predict"}, {"name": "predict_proba"})


def create_app() -> Starlette:
    models = _load_models()
    latest = max(models, key=int)

    async def infer(request: Request) -> JSONResponse:
        version = request.path_params.get("version", latest)
        model = models[version]
        body = await request.json()
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        names = [o["name"] for o in body.get("outputs") or DEFAULT_OUTPUTS]
        outputs = []
        for name in names:
            result = np.asarray(getattr(model, name)(x))
            outputs.append(
                {
                    "name": name,
                    "datatype": "FP64" if result.dtype.kind == "f" else "INT64",
                    "shape": list(result.shape),
                    "data": result.ravel().tolist(),
                }
            )
        return JSONResponse(
            {"model_name": MODEL, "model_version": version, "outputs": outputs}
        )

    async def no_model(request: Request) -> JSONResponse:
        # The same parsing and answer without the model: what HTTP and JSON alone cost.
        body = await request.json()
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        proba = np.full((len(x), 2), 0.5)
        return JSONResponse(
            {
                "model_name": MODEL,
                "model_version": request.path_params["version"],
                "outputs": [
                    {
                        "name": "predict_proba",
                        "datatype": "FP64",
                        "shape": list(proba.shape),
                        "data": proba.ravel().tolist(),
                    }
                ],
            }
        )

    async def ready(_request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    return Starlette(
        routes=[
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
            Route("/no-model/v2/models/{model}/versions/{version}/infer", no_model, methods=["POST"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
        ]
    )


def _load_models() -> dict[str, Any]:
    model_file = os.environ.get("BENCH_MODEL_FILE")
    if model_file:
        import joblib  # type: ignore[import-untyped]

        return {"1": joblib.load(model_file)}
    home = Path(os.environ["BENCH_HOME"])
    return {str(v): load_estimator(home, v) for v in registered_versions(home)}
