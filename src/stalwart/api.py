"""The functions a training script calls: ``stalwart.register_model`` and friends.

They use the registry the ``STALWART_*`` environment points at (SQLite under
``./.stalwart`` by default), so a script needs no setup to register a model that a
server started with the same environment will serve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stalwart.config import Settings, load_settings
from stalwart.registry import ModelVersion, Registry, Signature

__all__ = ["get_model", "register_model"]


def register_model(
    name: str,
    model: object,
    *,
    flavor: str | None = None,
    signature: Signature | Mapping[str, Any] | None = None,
    sample: object | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    description: str = "",
    trust_pickle: bool = False,
    trusted_types: Sequence[str] | None = None,
    training_set: Any = None,
    schema: Any = None,
    training_profile: Any = None,
    settings: Settings | None = None,
) -> ModelVersion:
    """Register ``model`` as the next version of ``name`` and return that version.

    >>> mv = register_model("breast-cancer", clf, sample=X_train, metrics={"auc": 0.99})  # doctest: +SKIP

    ``flavor`` is detected from the model's type when omitted (``sklearn``, ``onnx``,
    ``lightgbm``, ``xgboost``, ``python``). ``sample`` (a few input rows, as an array or a
    DataFrame) lets the flavor infer the signature and is used to check that the stored
    artifact loads back and predicts. scikit-learn models are stored with skops;
    ``trust_pickle=True`` stores them with pickle instead and records that trust on the
    version. ``training_set=`` (from :func:`stalwart.build_training_set`) records the
    feature list and FeatureSet versions a deployment will serve, and the data profile.
    The version's input schema (what every request is validated against) is ``schema``
    when given, else learned from ``training_profile``, the training set, or a sample
    DataFrame of at least 50 rows.
    """
    registry = Registry.open(settings or load_settings())
    try:
        return registry.register(
            name,
            model,
            flavor=flavor,
            signature=signature,
            sample=sample,
            metrics=metrics,
            tags=tags,
            description=description,
            trust_pickle=trust_pickle,
            trusted_types=trusted_types,
            training_set=training_set,
            schema=schema,
            training_profile=training_profile,
        )
    finally:
        registry.db.dispose()


def get_model(name: str, version: int | None = None, *, settings: Settings | None = None) -> ModelVersion:
    """A registered version's record (the latest when ``version`` is None)."""
    registry = Registry.open(settings or load_settings())
    try:
        return registry.get(name, version)
    finally:
        registry.db.dispose()
