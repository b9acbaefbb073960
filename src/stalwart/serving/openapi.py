"""The OpenAPI 3.1 document served at ``/openapi.json``.

Written out rather than generated from docstrings: it is a contract, checked by a test
that every route is documented (and nothing else is) and fuzzed with schemathesis.
Later routes (``/v1/...``) add their paths through :func:`openapi_document`'s ``extra``.
"""

from __future__ import annotations

from typing import Any

from stalwart._version import __version__

__all__ = ["ERROR_RESPONSES", "openapi_document", "ref"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# Every response carries the request's id (the client's when sane, else a generated one).
_RESPONSE_HEADERS: dict[str, Any] = {
    "X-Request-ID": {
        "description": "the request's id: the client's X-Request-ID when given, else generated",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    }
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _RESPONSE_HEADERS,
        "content": {"application/json": {"schema": schema}},
    }


def _with(responses: dict[str, Any], code: str, response: dict[str, Any]) -> dict[str, Any]:
    return {code: response, **responses}


def _error(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


ERROR_RESPONSES: dict[str, dict[str, Any]] = {
    "400": _error("the request is malformed; `error` names the field and the problem"),
    "404": _error("unknown model or version"),
    "408": _error("the body did not arrive in time (STALWART_BODY_TIMEOUT_SECONDS)"),
    "413": _error("the body is over the size limit"),
    "503": _error("not ready, or overloaded"),
}

_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 128},
    "description": "echoed back; generated when absent",
}

_TIMEOUT = {
    "name": "X-Request-Timeout",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "milliseconds the client will wait (1 to 600000); every stage respects it",
}
_PRIORITY = {
    "name": "X-Stalwart-Priority",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "low, normal (default) or high; load shedding turns lower priorities away first",
}
_ROUTING_KEY = {
    "name": "X-Stalwart-Routing-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 256},
    "description": (
        "what picks the variant when a deployment has a canary, and which shadows see a copy of the request "
        "(default: the first entity's key); the same key, the same variant and shadows"
    ),
}
_DEPLOYMENT = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
    "description": (
        "the binary tensor data extension: the body is this many bytes of JSON request, then the raw data of each "
        "input whose parameters.binary_data_size is set, in order"
    ),
}

_SCHEMAS: dict[str, Any] = {
    "Degraded": {
        "type": "object",
        "required": ["level", "reason"],
        "properties": {
            "level": {"type": "string", "enum": ["stale_features", "feature_defaults", "fallback_model", "last_good", "default"]},
            "reason": {"type": "string"},
            "detail": {"type": "string"},
        },
    },
    "PredictRequest": {
        "type": "object",
        "required": ["entities"],
        "properties": {
            "entities": {"type": "array", "items": {"type": "object"}, "description": "entity keys, one object per row"},
            "values": {"type": "array", "items": {"type": "object"}, "description": "request-time values, one object per entity"},
            "return_features": {"type": "boolean"},
            "id": {"type": "string"},
        },
    },
    "PredictResponse": {
        "type": "object",
        "required": ["request_id", "deployment", "predictions"],
        "properties": {
            "request_id": {"type": "string"},
            "id": {"type": "string"},
            "deployment": {"type": "string"},
            "model": {"type": ["object", "null"], "properties": {"name": {"type": "string"}, "version": {"type": "integer"}}},
            "predictions": {"type": "array", "items": {"type": "object"}},
            "features": {"type": "array", "items": {"type": "object"}},
            "validation": {"type": "object", "description": "values imputed, clipped or flagged, by feature: row numbers"},
            "degraded": {"$ref": "#/components/schemas/Degraded"},
        },
    },
    "RowsRequest": {
        "type": "object",
        "required": ["rows"],
        "properties": {"rows": {"type": "array", "items": {"type": "object"}}},
    },
    "WriteResult": {
        "type": "object",
        "required": ["rows", "entities", "feature_sets", "invalidated"],
        "properties": {
            "rows": {"type": "integer"},
            "entities": {"type": "integer"},
            "feature_sets": {"type": "array", "items": {"type": "string"}},
            "invalidated": {"type": "boolean"},
        },
    },
    "InvalidateRequest": {
        "type": "object",
        "properties": {"entities": {"type": ["array", "null"], "items": {"type": "object"}}},
    },
    "InvalidateResult": {
        "type": "object",
        "required": ["feature_set", "invalidated"],
        "properties": {
            "feature_set": {"type": "string"},
            "entities": {"type": ["integer", "null"]},
            "invalidated": {"type": "boolean"},
        },
    },
    "DeploymentInfo": {
        "type": "object",
        "required": ["name", "model", "ready"],
        "properties": {
            "name": {"type": "string"},
            "model": {"type": "string"},
            "description": {"type": "string"},
            "ready": {"type": "boolean"},
            "error": {"type": "string"},
            "serving": {"type": "object"},
            "features": {"type": "array", "items": {"type": "object"}},
            "entity_keys": {"type": "array", "items": {"type": "string"}},
            "request_values": {"type": "object"},
            "ladder": {"type": "object"},
        },
    },
    "DeploymentList": {
        "type": "object",
        "required": ["deployments"],
        "properties": {"deployments": {"type": "array", "items": {"$ref": "#/components/schemas/DeploymentInfo"}}},
    },
    "DeploymentHealth": {
        "type": "object",
        "required": ["name", "guards", "shedding", "status"],
        "properties": {
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "guards": {"type": "array", "items": {"type": "object"}},
            "shedding": {"type": "object"},
        },
    },
    "PredictionRecord": {
        "type": "object",
        "description": "one request as the prediction log keeps it; fields without a value are left out",
        "required": ["request_id", "time_ns", "entrypoint", "status", "latency_ms"],
        "properties": {
            "request_id": {"type": "string"},
            "time_ns": {"type": "integer", "description": "when the request arrived, ns since the epoch (UTC)"},
            "entrypoint": {"type": "string"},
            "status": {"type": "integer"},
            "latency_ms": {"type": "number"},
            "trace_id": {"type": "string"},
            "deployment": {"type": "string"},
            "variant": {"type": "string"},
            "model": {"type": "string"},
            "version": {"type": "integer"},
            "error": {"type": "string", "description": "the error's class, when it failed"},
            "rows": {"type": "integer"},
            "entities": {"type": "array", "items": {"type": "object"}},
            "features": {"type": "object", "description": "name: values per row, as the model saw them"},
            "inputs": {"type": "object"},
            "inputs_hash": {"type": "string"},
            "outputs": {"type": "object"},
            "validation": {"type": "object"},
            "degraded": {"type": "string"},
            "degraded_reason": {"type": "string"},
            "cache": {"type": "object"},
            "timings": {"type": "object", "additionalProperties": {"type": "number"}},
            "chain": {"type": "string", "description": "the hash chain (writer) holding it"},
            "seq": {"type": "integer"},
            "prev_hash": {"type": "string"},
            "hash": {"type": "string"},
        },
    },
    "FeedbackItem": {
        "type": "object",
        "required": ["label"],
        "description": "request_id (and row), or entity and time (and the deployment, here or for the batch)",
        "properties": {
            "label": {"type": ["number", "string", "boolean"], "description": "the observed outcome"},
            "request_id": {"type": "string", "minLength": 1, "maxLength": 256},
            "row": {"type": "integer", "minimum": 0, "description": "the request's row (entity), 0 by default"},
            "deployment": {"type": "string"},
            "entity": {"type": "object", "description": "the entity key, as sent to predict"},
            "time": {"type": ["integer", "string"], "description": "ns since the epoch, or ISO 8601 with its UTC offset"},
        },
        "additionalProperties": False,
    },
    "FeedbackRequest": {
        "type": "object",
        "required": ["items"],
        "properties": {
            "deployment": {"type": "string", "description": "the deployment of items that name none"},
            "items": {"type": "array", "items": ref("FeedbackItem"), "description": "at most STALWART_FEEDBACK_MAX_ITEMS (10 000)"},
        },
    },
    "FeedbackResult": {
        "type": "object",
        "required": ["accepted", "matched", "unmatched"],
        "properties": {
            "accepted": {"type": "integer"},
            "matched": {"type": "integer", "description": "joined to a logged prediction now"},
            "unmatched": {"type": "integer", "description": "stored; joined once their prediction is in the log"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "field": {"type": "string"},
            "violations": {"type": "array", "items": {"type": "object"}},
            "request_id": {"type": "string"},
        },
    },
    "Datatype": {
        "type": "string",
        "enum": [
            "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64", "BYTES",
        ],
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": ref("Datatype"),
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": ref("TensorMetadata")},
            "outputs": {"type": "array", "items": ref("TensorMetadata")},
            "parameters": {"type": "object"},
        },
    },
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Ready": {
        "type": "object",
        "required": ["ready"],
        "properties": {
            "name": {"type": "string"},
            "ready": {"type": "boolean"},
            "error": {"type": "string"},
        },
    },
    "RequestInput": {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": ref("Datatype"),
            "parameters": {"type": "object"},
            "data": {"type": "array", "description": "flat or nested, row-major"},
        },
    },
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": ref("RequestInput")},
            "outputs": {"type": "array", "items": ref("RequestOutput")},
        },
    },
    "ResponseOutput": {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": ref("Datatype"),
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    },
    "Resources": {
        "type": "object",
        "required": ["process", "memory", "limits", "models", "loading"],
        "properties": {
            "process": {"type": "object", "description": "pid, rss_bytes (null where unreadable), threads"},
            "memory": {
                "type": "object",
                "description": "budget_bytes (null: no limit), used_bytes, free_bytes, evictions and refusals since start",
            },
            "limits": {
                "type": "object",
                "description": "threads, omp_threads, max_calls and batching server-wide; models: each model's own (STALWART_MODEL_LIMITS)",
            },
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "version", "memory_bytes", "in_flight", "threads"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "integer"},
                        "memory_bytes": {"type": "integer", "description": "RSS growth across its load: an estimate"},
                        "measured": {"type": "boolean"},
                        "loaded_at": {"type": "number"},
                        "tracked": {"type": "boolean", "description": "its calls are counted (a memory budget or a call limit is set)"},
                        "last_used_at": {"type": ["number", "null"], "description": "its latest call's start (or its load), seconds since the epoch; null when not tracked"},
                        "in_flight": {"type": ["integer", "null"], "description": "calls in flight; null when not tracked"},
                        "protected": {"type": "boolean", "description": "unloaded last: a deployment routes to it, or it is the latest"},
                        "threads": {"type": "object", "description": "max (its executor), alive (now), omp (per model thread)"},
                        "concurrency": {"type": "integer", "description": "model calls at once (1 with batching)"},
                        "max_calls": {"type": ["integer", "null"]},
                    },
                },
            },
            "loading": {"type": "array", "items": {"type": "object"}},
        },
    },
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": ref("ResponseOutput")},
        },
    },
}


def _get(summary: str, ok: dict[str, Any], *, params: list[dict[str, Any]], errors: tuple[str, ...]) -> dict[str, Any]:
    responses = {"200": ok} | {code: ERROR_RESPONSES[code] for code in errors}
    return {"get": {"summary": summary, "parameters": [*params, _REQUEST_ID], "responses": responses}}


def _infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    ok = _json(ref("InferenceResponse"), "the model's outputs")
    ok = {
        **ok,
        "description": (
            "the model's outputs: JSON, or (binary tensor data extension, when an output's parameters.binary_data "
            "or the request's parameters.binary_data_output is true) the JSON response then the raw data of the "
            "outputs whose parameters.binary_data_size is set"
        ),
        "headers": {
            **ok["headers"],
            "Inference-Header-Content-Length": {
                "description": "with a binary response: the length of its JSON part",
                "schema": {"type": "string"},
            },
        },
        "content": {**ok["content"], "application/octet-stream": binary},
    }
    return {
        "post": {
            "summary": "Run inference",
            "parameters": [*params, _REQUEST_ID, _TIMEOUT, _PRIORITY, _HEADER_LENGTH],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("InferenceRequest")}, "application/octet-stream": binary},
            },
            "responses": {
                "200": ok,
                **{code: ERROR_RESPONSES[code] for code in ("400", "404", "408", "413", "503")},
                "422": _error("the inputs broke the model's schema (reject policy)"),
                "500": _error("the model raised"),
                "504": _error("the call ran past its deadline"),
            },
        }
    }


def _v1_paths() -> dict[str, Any]:
    degraded_header = {
        "X-Stalwart-Degraded": {"description": "level; reason=... when a step of the ladder answered", "schema": {"type": "string"}},
        "X-Stalwart-Variant": {"description": "the variant the request was routed to (primary or canary); when it failed over, `degraded` and `model` in the body say who answered", "schema": {"type": "string"}},
    }
    unauthorised = _error("no bearer token, or not the admin token")
    named = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    control = {
        "/v1/sources/{name}/rows": {
            "post": {
                "summary": "Write rows to a SQL source; the entities they touch are invalidated in every replica",
                "security": [{"bearer": []}],
                "parameters": [named, _REQUEST_ID],
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("RowsRequest")}}},
                "responses": {
                    "200": _json(ref("WriteResult"), "rows written, caches told"),
                    "400": ERROR_RESPONSES["400"],
                    "401": unauthorised,
                    "404": _error("no SQL source of that name"),
                    "408": ERROR_RESPONSES["408"],
                    "413": ERROR_RESPONSES["413"],
                    "503": ERROR_RESPONSES["503"],
                },
            }
        },
        "/v1/features/{name}/invalidate": {
            "post": {
                "summary": "Drop a feature set's cached values: listed entities, or all",
                "security": [{"bearer": []}],
                "parameters": [named, _REQUEST_ID],
                "requestBody": {"required": False, "content": {"application/json": {"schema": ref("InvalidateRequest")}}},
                "responses": {
                    "200": _json(ref("InvalidateResult"), "invalidated"),
                    "400": ERROR_RESPONSES["400"],
                    "401": unauthorised,
                    "404": _error("no feature set of that name"),
                    "408": ERROR_RESPONSES["408"],
                    "413": ERROR_RESPONSES["413"],
                },
            }
        },
    }
    control["/v1/predictions/{request_id}"] = {
        "get": {
            "summary": "One request's prediction record (admin token: records hold inputs and outputs)",
            "security": [{"bearer": []}],
            "parameters": [{"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}, _REQUEST_ID],
            "responses": {
                "200": _json(ref("PredictionRecord"), "the record, as stored"),
                "401": unauthorised,
                "404": _error("no record of that request id (or the log cannot be read back)"),
                "503": _error("the prediction log's store cannot be reached"),
            },
        }
    }
    window = [
        {"name": "since", "in": "query", "required": False, "schema": {"type": "string", "default": "24h"},
         "description": "start: a duration ago (24h, 90m) or an ISO 8601 time"},
        {"name": "until", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "end (default now): a duration ago or an ISO 8601 time"},
    ]
    control["/v1/deployments/{name}/monitoring"] = {
        "get": {
            "summary": "The deployment's monitoring report as JSON: drift against the training profile, distributions, predictions and quality over time, skew, alerts (admin token)",
            "security": [{"bearer": []}],
            "parameters": [_DEPLOYMENT, *window, _REQUEST_ID],
            "responses": {
                "200": _json({"type": "object"}, "the report document (the same as `stalwart monitor report --json`)"),
                "400": _error("since or until is neither a duration nor an ISO time, or the window is empty or too long; `field` names it"),
                "401": unauthorised,
                "404": _error("no such deployment"),
                "503": ERROR_RESPONSES["503"],
            },
        }
    }
    changed: dict[str, Any] = {
        "400": ERROR_RESPONSES["400"],
        "401": unauthorised,
        "404": _error("no such deployment, model version or action"),
        "408": ERROR_RESPONSES["408"],
        "409": _error("the deployment's rollout is not in a state for this (one open at a time; pause takes a running one)"),
        "413": ERROR_RESPONSES["413"],
        "503": ERROR_RESPONSES["503"],
    }
    body = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
    control["/v1/deployments/{name}/routes"] = {
        "get": {
            "summary": "The deployment's variants as every replica serves them: primary, canary and weight, salt, shadows",
            "parameters": [_DEPLOYMENT, _REQUEST_ID],
            "responses": {"200": _json({"type": "object"}, "the routes and their revision"), "404": _error("no such deployment"), "503": ERROR_RESPONSES["503"]},
        },
        "put": {
            "summary": "Set the canary, its weight or the shadows by hand (not while a rollout is open; admin token)",
            "security": [{"bearer": []}],
            "parameters": [_DEPLOYMENT, _REQUEST_ID],
            "requestBody": body,
            "responses": _with(changed, "200", _json({"type": "object"}, "the new routes and revision")),
        },
    }
    control["/v1/deployments/{name}/rollout"] = {
        "get": {
            "summary": "The deployment's open rollout (else its last) and its newest events",
            "parameters": [_DEPLOYMENT, _REQUEST_ID, {"name": "events", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1000}}],
            "responses": {
                "200": _json({"type": "object"}, "the rollout and its events"),
                "400": _error("events is not a whole number from 0 to 1000"),
                "404": _error("no such deployment, or it has had no rollout"),
                "503": ERROR_RESPONSES["503"],
            },
        },
        "post": {
            "summary": "Start a canary rollout: {\"canary\": \"model:version\", \"plan\": {...}} (admin token)",
            "security": [{"bearer": []}],
            "parameters": [_DEPLOYMENT, _REQUEST_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": _with(changed, "201", _json({"type": "object"}, "the rollout, at its first step")),
        },
    }
    control["/v1/deployments/{name}/rollout/{action}"] = {
        "post": {
            "summary": "pause, resume, promote or roll back the deployment's rollout (admin token)",
            "security": [{"bearer": []}],
            "parameters": [_DEPLOYMENT, {"name": "action", "in": "path", "required": True, "schema": {"type": "string", "enum": ["pause", "resume", "promote", "rollback"]}}, _REQUEST_ID],
            "requestBody": body,
            "responses": _with(changed, "200", _json({"type": "object"}, "the rollout in its new state")),
        },
    }
    control["/v1/feedback"] = {
        "post": {
            "summary": "Labels for logged predictions, by request id or by deployment, entity and time; the latest label of a prediction wins",
            "security": [{"bearer": []}],
            "parameters": [_REQUEST_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref("FeedbackRequest")}}},
            "responses": {
                "200": _json(ref("FeedbackResult"), "labels stored; how many matched a logged prediction"),
                "400": ERROR_RESPONSES["400"],
                "401": unauthorised,
                "408": ERROR_RESPONSES["408"],
                "413": ERROR_RESPONSES["413"],
                "422": _error("an item is malformed; `field` names it (items[3].label)"),
                "503": ERROR_RESPONSES["503"],
            },
        }
    }
    control["/v1/resources"] = _get(
        "Memory, threads and calls of the loaded model versions, against the memory budget and limits",
        _json(ref("Resources"), "the process, the memory budget, the limits and each loaded version"), params=[], errors=(),
    )
    answered = _json(ref("PredictResponse"), "predictions, with the model version and how they were reached")
    answered = {**answered, "headers": {**answered["headers"], **degraded_header}}
    return control | {
        "/v1/deployments": _get("Every deployment", _json(ref("DeploymentList"), "deployments"), params=[], errors=()),
        "/v1/deployments/{name}": _get(
            "A deployment: its model, features and ladder", _json(ref("DeploymentInfo"), "the deployment"),
            params=[_DEPLOYMENT], errors=("404",),
        ),
        "/v1/deployments/{name}/health": _get(
            "Every guard's state and the shedder's load", _json(ref("DeploymentHealth"), "health"),
            params=[_DEPLOYMENT], errors=("404",),
        ),
        "/v1/deployments/{name}/predict": {
            "post": {
                "summary": "Predict for entities: features computed online, then the model",
                "parameters": [_DEPLOYMENT, _REQUEST_ID, _TIMEOUT, _PRIORITY, _ROUTING_KEY],
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("PredictRequest")}}},
                "responses": {
                    "200": answered,
                    **{code: ERROR_RESPONSES[code] for code in ("400", "404", "408", "413", "503")},
                    "422": _error("a value broke the model's schema (reject policy)"),
                    "500": _error("the model raised and the ladder had no answer"),
                    "502": _error("a feature source failed and the ladder had no answer"),
                    "504": _error("the call ran past its deadline and the ladder had no answer"),
                },
            }
        },
    }


def _paths() -> dict[str, Any]:
    ready = _json(ref("Ready"), "ready")
    model_ready = _json(ref("Ready"), "ready")
    not_ready = _json(ref("Ready"), "not ready (yet): loading, or failed to load")
    model_meta = _json(ref("ModelMetadata"), "the model's inputs and outputs")
    return {
        "/v2": _get("Server metadata", _json(ref("ServerMetadata"), "server metadata"), params=[], errors=()),
        "/v2/health/live": _get("Liveness", _json(ref("Live"), "the server is live"), params=[], errors=()),
        "/v2/health/ready": {
            "get": {
                "summary": "Readiness",
                "parameters": [_REQUEST_ID],
                "responses": {"200": ready, "503": not_ready},
            }
        },
        "/v2/models/{model}": _get("Model metadata (latest version)", model_meta, params=[_MODEL], errors=("404",)),
        "/v2/models/{model}/ready": {
            "get": {
                "summary": "Model readiness (latest version)",
                "parameters": [_MODEL, _REQUEST_ID],
                "responses": {"200": model_ready, "404": ERROR_RESPONSES["404"], "503": not_ready},
            }
        },
        "/v2/models/{model}/infer": _infer([_MODEL]),
        "/v2/models/{model}/versions/{version}": _get(
            "Model metadata", model_meta, params=[_MODEL, _VERSION], errors=("404",)
        ),
        "/v2/models/{model}/versions/{version}/ready": {
            "get": {
                "summary": "Model version readiness",
                "parameters": [_MODEL, _VERSION, _REQUEST_ID],
                "responses": {"200": model_ready, "404": ERROR_RESPONSES["404"], "503": not_ready},
            }
        },
        "/v2/models/{model}/versions/{version}/infer": _infer([_MODEL, _VERSION]),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "parameters": [_REQUEST_ID],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "headers": _RESPONSE_HEADERS,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "parameters": [_REQUEST_ID],
                "responses": {"200": _json({"type": "object"}, "OpenAPI document")},
            }
        },
    }


def openapi_document(extra_paths: dict[str, Any] | None = None, extra_schemas: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole document, with any extra paths and schemas merged in."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Stalwart",
            "version": __version__,
            "description": "Open Inference Protocol (KServe v2) data plane and Stalwart's control plane.",
        },
        "paths": _paths() | _v1_paths() | (extra_paths or {}),
        "components": {
            "schemas": _SCHEMAS | (extra_schemas or {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
