"""The hash chain's fast path: one encoding gives exactly the bytes of the general path,
and what a verifier reads back from them is intact."""

from __future__ import annotations

import msgspec

from stalwart.monitoring.records import Chain, decode_record, encode_record, verify_chain
from tests.monitoring.records_factory import full_record


def test_linking_encoded_gives_the_same_bytes_as_linking_then_encoding() -> None:
    fast, general = Chain("replica-a"), Chain("replica-a")
    for i in range(50):
        record = full_record(i)
        assert fast.link_encoded(record) == encode_record(general.link(record))
    assert (fast.seq, fast.prev_hash) == (general.seq, general.prev_hash)


def test_records_linked_encoded_verify_after_a_round_trip() -> None:
    chain = Chain("replica-b")
    stored = [chain.link_encoded(full_record(i)) for i in range(20)]
    assert verify_chain(decode_record(data) for data in stored) is None
    changed = [decode_record(data) for data in stored]
    changed[7] = msgspec.structs.replace(changed[7], status=500)
    found = verify_chain(changed)
    assert found is not None
    assert (found.seq, found.problem) == (7, "changed")


def test_an_int_in_a_float_field_takes_the_general_path_and_still_verifies() -> None:
    chain = Chain("replica-c")
    odd = [
        full_record(0, latency_ms=3),
        full_record(1, timings={"model": 1, "total": 2.5}),
        full_record(2, timings=None),
    ]
    stored = [chain.link_encoded(record) for record in odd]
    assert verify_chain(decode_record(data) for data in stored) is None
    assert decode_record(stored[0]).latency_ms == 3.0
