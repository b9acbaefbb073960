"""The gRPC service's generated files are what `make proto` makes from the vendored proto,
and the message classes live apart from every other copy of the protocol."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import tritonclient.grpc.service_pb2 as triton_messages

from stalwart.serving.grpc import messages

GRPC_DIR = Path(messages.__file__).parent
PROTO = GRPC_DIR / "grpc_predict_v2.proto"
GENERATED = ("grpc_predict_v2.binpb", "grpc_predict_v2_pb2.pyi")
# KServe's docs/predict-api/v2/grpc_predict_v2.proto, byte for byte (PROTO_LICENSE.md).
UPSTREAM_SHA256 = "10c6b6b3d32dd43f995f85f8324d5b4f014f13cb2d9cadee97a9afa29f210858"


def test_the_vendored_proto_is_unmodified() -> None:
    """The proto is KServe's file as published; its origin and license are beside it."""
    assert hashlib.sha256(PROTO.read_bytes()).hexdigest() == UPSTREAM_SHA256
    assert "Apache License, Version 2.0" in (GRPC_DIR / "PROTO_LICENSE.md").read_text()


def test_make_proto_reproduces_the_committed_files(tmp_path: Path) -> None:
    """Regenerating (what `make proto` runs) gives the committed descriptor set and stubs
    byte for byte: nothing generated was edited by hand."""
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={GRPC_DIR}",
            f"--descriptor_set_out={tmp_path / GENERATED[0]}", f"--pyi_out={tmp_path}", str(PROTO),
        ],
        check=True,
    )
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (GRPC_DIR / name).read_bytes(), name
    makefile = (Path(__file__).parents[3] / "Makefile").read_text()
    assert "grpc_tools.protoc" in makefile
    assert "--descriptor_set_out=$(PROTO_DIR)/grpc_predict_v2.binpb" in makefile


def test_messages_live_beside_tritons_own() -> None:
    """Triton's client registers the same `inference.*` names in protobuf's default pool;
    ours are in a pool of their own, so both import in one process and interoperate on
    the wire."""
    ours = messages.ModelInferRequest(model_name="m", id="r", raw_input_contents=[b"\x01"])
    ours.inputs.add(name="x", datatype="FP64", shape=[1, 2])
    theirs = triton_messages.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, theirs.id, theirs.inputs[0].name, list(theirs.inputs[0].shape)) == ("m", "r", "x", [1, 2])
    assert type(ours) is not type(theirs)
    assert messages.ModelInferRequest.DESCRIPTOR.file.pool is not triton_messages.DESCRIPTOR.pool
