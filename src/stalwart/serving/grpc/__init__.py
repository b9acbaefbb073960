"""The Open Inference Protocol's gRPC service, ``inference.GRPCInferenceService``.

``ServerLive``, ``ServerReady``, ``ModelReady``, ``ServerMetadata``, ``ModelMetadata`` and
``ModelInfer`` (typed ``contents`` and ``raw_input_contents`` / ``raw_output_contents``),
served by a ``grpc.aio`` server on ``STALWART_GRPC_PORT`` in the HTTP server's process and
event loop, through the same data plane as REST. It needs the ``grpc`` extra
(``pip install 'stalwart[grpc]'``); nothing here is imported unless the port is set.

- :mod:`.messages`: the protocol's message classes, from the vendored
  ``grpc_predict_v2.proto`` (``make proto``), in a descriptor pool of their own.
- :mod:`.tensors`: requests to tensors, outputs to responses.
- :mod:`.status`: Stalwart's errors as gRPC status codes.
- :mod:`.service`: the RPCs, a thin adapter over the data plane.
- :mod:`.server`: the ``grpc.aio`` server, its limits and its lifecycle.
"""
