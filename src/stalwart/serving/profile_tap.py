"""Live profiles' tap on the data plane: answered requests queued, their columns taken off
the event loop.

On the event loop, :class:`ProfileTap` only checks that the request was answered and
appends its :class:`~stalwart.serving.dataplane.Outcome` to the live profiles' bounded
queue. On their worker thread, :func:`observation` reads the columns out of it: the
features a deployment served (``feature:<name>``, found as the prediction log finds them,
:func:`~stalwart.serving.tap.feature_matrix`), a model's input tensors (``input:<name>``)
and its outputs (``output:<name>``; a matrix's columns ``<name>[<j>]``), all as the model
saw and returned them. Tensors of rank over 2, or wider than 256 columns (images,
embeddings), are not profiled: a per-column sketch of them would say little and cost much.
A ``/v1`` answer from the last good prediction or the declared default is not profiled
either (no model saw its inputs); one from the fallback model is, under its variant.

Fields declared sensitive for the prediction log (``STALWART_PREDICTION_LOG_REDACT``, a
deployment's ``log={"redact": ...}``), whether dropped or hashed there, are not profiled
at all: a profile keeps exact extremes and sketches of the values, which would give away
what the log hides.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from stalwart.config import Settings
from stalwart.monitoring.live_profiles import LiveProfiles, Observation, Retention, oip_deployment
from stalwart.serving.dataplane import Outcome
from stalwart.serving.policies import LogPolicy
from stalwart.serving.tap import feature_matrix
from stalwart.storage import Database

__all__ = ["ProfileTap", "observation", "open_live_profiles"]

_MAX_WIDTH = 256  # columns of one tensor profiled one by one; wider tensors are left out


class ProfileTap:
    """A :class:`~stalwart.serving.dataplane.RequestTap` feeding :class:`LiveProfiles`."""

    __slots__ = ("live",)

    def __init__(self, live: LiveProfiles[Outcome]) -> None:
        self.live = live

    def __call__(self, outcome: Outcome) -> None:
        if outcome.error is None:  # answered requests only: a rejected one says nothing of traffic
            self.live.submit(outcome)


def open_live_profiles(
    settings: Settings,
    database: Database,
    registry: CollectorRegistry | None = None,
    deployments: Mapping[str, LogPolicy] | None = None,
) -> LiveProfiles[Outcome] | None:
    """Live profiles into ``database`` as the settings describe; None when
    ``STALWART_LIVE_PROFILES=off``. ``deployments``: each deployment's log policy, whose
    sensitive fields are left out. Call ``start()`` once the server runs and ``close()``
    when it stops (it writes the open buckets)."""
    if settings.live_profiles == "off":
        return None
    default = frozenset(settings.prediction_log_redact)
    hidden = {name: default | frozenset(p.redact) for name, p in (deployments or {}).items() if p.redact}

    def extract(outcome: Outcome) -> Observation | None:
        name = outcome.deployment
        return observation(outcome, hidden=hidden.get(name, default) if name is not None else default)

    return LiveProfiles(
        database,
        extract=extract,
        flush_seconds=settings.live_profiles_flush_seconds,
        max_queue=settings.live_profiles_queue,
        retention=Retention(
            settings.live_profiles_minute_retention_hours,
            settings.live_profiles_hour_retention_days,
            settings.live_profiles_day_retention_days,
        ),
        registry=registry,
    )


def observation(outcome: Outcome, *, hidden: frozenset[str] = frozenset()) -> Observation | None:
    """The columns of one answered request (on the worker thread), without the features,
    inputs and outputs named in ``hidden``; None when there is nothing a model saw to
    profile."""
    exchange = outcome.exchange
    if outcome.error is not None or exchange is None or exchange.results is None:
        return None
    columns: dict[str | tuple[str, ...], Any] = {}
    if outcome.entrypoint == "/v2":
        deployment, variant = oip_deployment(exchange.model), ""
        for name, array in exchange.inputs.items():
            if name not in hidden:
                _tensor(columns, "input:", name, array)
    else:
        prediction = outcome.prediction
        if prediction is None or prediction.variant is None or outcome.deployment is None:
            return None  # the last good prediction or the default answered: no model did
        deployment, variant = outcome.deployment, prediction.variant
        names = outcome.feature_names
        matrix = feature_matrix(exchange.inputs, names)
        if matrix is not None and names is not None:
            kept, keep = _feature_names(names, hidden)
            if kept:
                columns[kept] = matrix if keep is None else matrix[:, keep]
        else:
            for name, array in exchange.inputs.items():
                if name not in hidden:
                    _tensor(columns, "feature:", name, array)
    for name, array in exchange.results.items():
        if name not in hidden:
            _tensor(columns, "output:", name, array)
    return Observation(
        deployment=deployment,
        variant=variant,
        model=exchange.model,
        version=exchange.version,
        time_ns=outcome.info.arrived_ns,
        rows=exchange.rows,
        columns=columns,
    )


def _tensor(columns: dict[str | tuple[str, ...], Any], prefix: str, name: str, array: np.ndarray[Any, Any]) -> None:
    if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
        columns[prefix + name] = array
    elif array.ndim == 2 and array.shape[1] <= _MAX_WIDTH:
        columns[_indexed(prefix + name, int(array.shape[1]))] = array


@lru_cache(maxsize=1024)
def _indexed(name: str, width: int) -> tuple[str, ...]:
    return tuple(f"{name}[{j}]" for j in range(width))


@lru_cache(maxsize=1024)
def _feature_names(names: tuple[str, ...], hidden: frozenset[str]) -> tuple[tuple[str, ...], list[int] | None]:
    """The profiled names of a feature matrix's columns, and which columns they are (None:
    all of them)."""
    keep = [j for j, name in enumerate(names) if name not in hidden]
    return tuple(f"feature:{names[j]}" for j in keep), None if len(keep) == len(names) else keep
