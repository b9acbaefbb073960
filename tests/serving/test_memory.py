"""The floor of a load's measured size: the numpy arrays a loaded model holds."""

from __future__ import annotations

import numpy as np

from stalwart.serving.memory import array_bytes, measure


class _Model:
    table = np.ones(1_000_000)  # a class attribute: the class's, not this model's data

    def __init__(self) -> None:
        self.weights = np.ones(1000)
        self.view = self.weights[10:]  # a view: the same buffer, counted once
        self.layers = [{"bias": np.zeros(500, dtype=np.float32)}, (np.arange(4, dtype=np.int64),)]


def test_array_bytes_counts_each_buffer_once_and_only_the_models_own_data() -> None:
    assert array_bytes(_Model()) == 1000 * 8 + 500 * 4 + 4 * 8


def test_array_bytes_follows_object_arrays_and_stops_at_its_limit() -> None:
    boxes = np.empty(2, dtype=object)
    boxes[0], boxes[1] = np.ones(10), np.ones(20)
    assert array_bytes(boxes) == 2 * 8 + 30 * 8
    chain: list[object] = [np.ones(100)]
    for _ in range(50):
        chain = [chain]
    assert array_bytes(chain) == 800
    assert array_bytes(chain, limit=10) == 0


def test_a_load_is_never_measured_below_the_arrays_it_holds() -> None:
    measured = measure(lambda: np.random.default_rng(0).random(250_000))
    assert measured.grew is None or measured.grew >= 2_000_000


def test_array_bytes_reaches_a_model_through_its_bound_methods() -> None:
    """A flavor that keeps ``model.predict`` holds the model, and so its arrays."""
    model = _Model()
    assert array_bytes({"predict": model.__init__}) == array_bytes(model)


def test_array_bytes_counts_arrays_over_another_objects_buffer() -> None:
    """Unpickled arrays lie over the pickle's bytes: counted once per buffer."""
    data = np.frombuffer(bytes(800), dtype=np.float64)
    assert array_bytes([data, data[:10]]) == 800
