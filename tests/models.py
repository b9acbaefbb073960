"""Model classes the tests register with the python flavor (and one sklearn transformer).

They live in an importable module, not in the test files, because the python flavor stores
a class by its import path: the server, and other processes, import it from here.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

# One column per Open Inference Protocol datatype, two rows each, with values at the edges
# of each type's range.
ALL_DATATYPES: dict[str, np.ndarray[Any, Any]] = {
    "BOOL": np.array([True, False]),
    "UINT8": np.array([0, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "FP16": np.array([-65504.0, 0.5], dtype=np.float16),
    "FP32": np.array([-3.4e38, 1.5], dtype=np.float32),
    "FP64": np.array([-1.7e308, 2.25], dtype=np.float64),
    "BYTES": np.array(["héllo", "日本語 ✓"], dtype=object),
}


class Echo:
    """Returns its inputs unchanged: a column ``x`` comes back as output ``x``."""

    def predict(self, x: Any) -> Any:
        if isinstance(x, Mapping):
            return dict(x)
        return x


class Linear:
    """``x @ weights + bias``, with numpy attributes (saved as data, not pickled)."""

    def __init__(self, weights: np.ndarray[Any, Any], bias: float) -> None:
        self.weights = weights
        self.bias = bias
        self.labels = {"unit": "dollars"}

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        result: np.ndarray[Any, Any] = x @ self.weights + self.bias
        return result


class Mixed:
    """A columnar model over mixed datatypes, including a string column."""

    def predict(self, x: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        length = np.array([len(s) for s in x["city"]], dtype=np.int64)
        score = x["income"].astype(np.float64) * 0.001 + x["age"] + length
        return {"score": score, "long_name": length > 5}


class Exploding:
    """A model whose predict raises, as user code sometimes does."""

    def predict(self, x: Any) -> Any:
        raise ZeroDivisionError("the model divided by zero")


class HoldsAFunction:
    """Holds something that is not data, so it cannot be saved without pickle."""

    def __init__(self) -> None:
        self.transform = len

    def predict(self, x: Any) -> Any:
        return np.asarray(x).sum(axis=1)


class AddOne(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """A user's own scikit-learn transformer: skops must be told to trust it."""

    def fit(self, x: Any, y: Any = None) -> AddOne:
        return self

    def transform(self, x: Any) -> Any:
        return np.asarray(x) + 1.0


# Set by a test to let Blocking.predict return: lets a test hold a request in flight.
RELEASE = threading.Event()


class Blocking:
    """Waits for :data:`RELEASE` before answering (at most 30 s)."""

    def predict(self, x: Any) -> Any:
        RELEASE.wait(timeout=30)
        return np.asarray(x).sum(axis=1)


class Unencodable:
    """Answers a string JSON cannot carry (a lone surrogate): a bug in the model's output
    that only shows when the response is encoded."""

    def predict(self, x: Any) -> Any:
        out = np.empty(len(x), dtype=object)
        out[:] = ["\ud800"] * len(x)
        return out


class OpenMPThreads:
    """Answers, for each row, how many threads an OpenMP region started in the calling
    thread would use (what scikit-learn's OpenMP estimators ask before computing)."""

    def predict(self, x: Any) -> Any:
        from threadpoolctl import ThreadpoolController

        pools = ThreadpoolController().select(user_api="openmp").info()
        threads = min(pool["num_threads"] for pool in pools) if pools else -1
        return np.full(len(x), threads, dtype=np.int64)


class Picky:
    """Sums each row, but refuses rows with a value over ``limit`` (as a scaler that
    overflows does), with a message no client should see. Each call takes ``delay``
    seconds, so concurrent requests queue up and share batches."""

    def __init__(self, limit: float = 1e300, delay: float = 0.0) -> None:
        self.limit = limit
        self.delay = delay

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        import time

        if self.delay:
            time.sleep(self.delay)
        matrix = np.asarray(x, dtype=np.float64)
        if (np.abs(matrix) > self.limit).any():
            raise ValueError("value too large; secret=/etc/shadow")
        result: np.ndarray[Any, Any] = matrix.sum(axis=1)
        return result


class Ballast:
    """Holds ``n`` random float64 values (8n bytes, all resident: random, not zeros, which
    the system would map lazily) and answers each row's sum plus ``offset``, so an answer
    says which version gave it. Registered with ``trust_pickle=True``: its array loads in
    milliseconds (the JSON artifact of a python-flavor array takes a tenth of a second per
    megabyte), and the memory-budget tests load versions hundreds of times."""

    def __init__(self, n: int, offset: float, seed: int = 0) -> None:
        self.weights = np.random.default_rng(seed).random(n)
        self.offset = float(offset)

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        result: np.ndarray[Any, Any] = np.asarray(x, dtype=np.float64).sum(axis=1) + self.offset
        return result


class SlowToLoad:
    """A model whose loading takes ``delay`` seconds (its pickle's ``__setstate__`` sleeps)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __setstate__(self, state: dict[str, Any]) -> None:
        import time

        time.sleep(state["delay"])
        self.__dict__.update(state)

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        result: np.ndarray[Any, Any] = np.asarray(x, dtype=np.float64).sum(axis=1)
        return result
