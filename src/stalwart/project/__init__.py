"""Declarations: what a project file says, and nothing that does I/O.

Entities, sources, feature sets (of ``Latest``, ``Window`` and ``Transform`` features),
deployments, and the :class:`Project` that collects them from a project file. The engine
that computes features from these declarations (training sets, online resolution,
caching, writes, parity) is :mod:`stalwart.features`; serving them is
:mod:`stalwart.serving`. This package sits at the bottom of the layers: it imports only
:mod:`stalwart.errors` and :mod:`stalwart.durations`, so any layer may read a declaration.

>>> from stalwart.project import Entity, FeatureSet, SqlSource, Window
>>> card = Entity("card", keys=["card_id"])
>>> tx = SqlSource("transactions", table="transactions", entity=card, timestamp="ts")
>>> activity = FeatureSet("activity", entity=card, source=tx, features=[
...     Window("tx_count_1d", agg="count", window="1d")])
>>> activity.feature_names
['tx_count_1d']
"""

from stalwart.project.alerts import Alert
from stalwart.project.deployment import Deployment, parse_model_ref
from stalwart.project.entities import Entity
from stalwart.project.feature_sets import (
    Feature,
    FeatureRef,
    FeatureSet,
    Latest,
    Transform,
    Window,
    feature_refs,
)
from stalwart.project.loader import Project, load_project
from stalwart.project.sources import (
    CallableSource,
    FileSource,
    RequestField,
    RequestSource,
    Source,
    SqlSource,
)

__all__ = [
    "Alert",
    "CallableSource",
    "Deployment",
    "Entity",
    "Feature",
    "FeatureRef",
    "FeatureSet",
    "FileSource",
    "Latest",
    "Project",
    "RequestField",
    "RequestSource",
    "Source",
    "SqlSource",
    "Transform",
    "Window",
    "feature_refs",
    "load_project",
    "parse_model_ref",
]
