"""Each model version's memory as last measured at load (the model_memory table, migration 10)."""

from __future__ import annotations

from stalwart.registry import Registry


def test_the_newest_measurement_of_a_version_wins(any_registry: Registry) -> None:
    """A version has one row: measured again, its figure, time and replica are replaced;
    versions and models are kept apart; an unmeasured version has none."""
    records = any_registry.memory
    assert records.get("m", 1) is None
    records.record("m", 1, 4_000_000, replica="host-a-1", at=100.0)
    records.record("m", 2, 5_000_000, replica="host-a-1", at=101.0)
    records.record("n", 1, 1_000, replica="host-b-7", at=102.0)
    records.record("m", 1, 4_100_000, replica="host-b-7", at=200.0)
    first = records.get("m", 1)
    assert first is not None
    assert (first.bytes, first.measured_at, first.replica) == (4_100_000, 200.0, "host-b-7")
    assert {key: r.bytes for key, r in records.all().items()} == {("m", 1): 4_100_000, ("m", 2): 5_000_000, ("n", 1): 1_000}
