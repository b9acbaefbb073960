"""The protocol's message classes, built from the vendored ``grpc_predict_v2.proto``.

``make proto`` compiles the proto into a descriptor set (``grpc_predict_v2.binpb``) and type
stubs (``grpc_predict_v2_pb2.pyi``, which mypy reads for this module's names). The classes
are made from the descriptor set in a descriptor pool of their own, not protobuf's default
pool, where a generated ``_pb2`` module would put them: Triton's client, KServe and MLServer
each register the same ``inference.*`` names there, and two registrations of one name
fail at import ("duplicate symbol 'inference.ServerLiveRequest'"). So a model served
here may itself call Triton with ``tritonclient.grpc``, and tests drive the server with it
from the same process. Message names never travel on the wire; only the service's method
paths do (``/inference.GRPCInferenceService/ModelInfer``).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "SERVICE",
    "InferParameter",
    "InferTensorContents",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
]

SERVICE = "inference.GRPCInferenceService"
"""The service's full name, as its method paths carry it."""


def _pool() -> descriptor_pool.DescriptorPool:
    raw = resources.files(__package__).joinpath("grpc_predict_v2.binpb").read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        pool.Add(file)
    return pool


_POOL = _pool()


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


if TYPE_CHECKING:
    from stalwart.serving.grpc.grpc_predict_v2_pb2 import (
        InferParameter,
        InferTensorContents,
        ModelInferRequest,
        ModelInferResponse,
        ModelMetadataRequest,
        ModelMetadataResponse,
        ModelReadyRequest,
        ModelReadyResponse,
        ServerLiveRequest,
        ServerLiveResponse,
        ServerMetadataRequest,
        ServerMetadataResponse,
        ServerReadyRequest,
        ServerReadyResponse,
    )
else:
    InferParameter = _message("InferParameter")
    InferTensorContents = _message("InferTensorContents")
    ModelInferRequest = _message("ModelInferRequest")
    ModelInferResponse = _message("ModelInferResponse")
    ModelMetadataRequest = _message("ModelMetadataRequest")
    ModelMetadataResponse = _message("ModelMetadataResponse")
    ModelReadyRequest = _message("ModelReadyRequest")
    ModelReadyResponse = _message("ModelReadyResponse")
    ServerLiveRequest = _message("ServerLiveRequest")
    ServerLiveResponse = _message("ServerLiveResponse")
    ServerMetadataRequest = _message("ServerMetadataRequest")
    ServerMetadataResponse = _message("ServerMetadataResponse")
    ServerReadyRequest = _message("ServerReadyRequest")
    ServerReadyResponse = _message("ServerReadyResponse")
