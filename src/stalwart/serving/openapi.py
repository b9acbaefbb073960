"""The OpenAPI 3.1 document served at ``/openapi.json``.

Written out rather than generated from docstrings: it is a contract, checked by a test
that every route is documented (and nothing else is) and fuzzed with schemathesis.
Later routes (``/v1/...``) add their paths through :func:`openapi_document`'s ``extra``.
"""

from __future__ import annotations

from typing import Any

from stalwart import __version__

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


def _error(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


ERROR_RESPONSES: dict[str, dict[str, Any]] = {
    "400": _error("the request is malformed; `error` names the field and the problem"),
    "404": _error("unknown model or version"),
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

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "field": {"type": "string"},
            "violations": {"type": "array", "items": {"type": "object"}},
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
    return {
        "post": {
            "summary": "Run inference",
            "parameters": [*params, _REQUEST_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("InferenceRequest")}},
            },
            "responses": {
                "200": _json(ref("InferenceResponse"), "the model's outputs"),
                **{code: ERROR_RESPONSES[code] for code in ("400", "404", "413", "503")},
                "422": _error("the inputs broke the model's schema (reject policy)"),
                "500": _error("the model raised"),
                "504": _error("the call ran past its deadline"),
            },
        }
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
        "paths": _paths() | (extra_paths or {}),
        "components": {
            "schemas": _SCHEMAS | (extra_schemas or {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
