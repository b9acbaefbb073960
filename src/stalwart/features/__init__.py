"""Entities, sources and feature sets defined once; training sets and online features from
the same definitions; the parity check that proves they agree."""

from stalwart.features.definitions import (
    CallableSource,
    Entity,
    FeatureSet,
    FileSource,
    Latest,
    RequestSource,
    SqlSource,
    Transform,
    Window,
)
from stalwart.features.online import OnlineFeatures
from stalwart.features.project import Project, load_project
from stalwart.features.training import TrainingSet, build_training_set

__all__ = [
    "CallableSource",
    "Entity",
    "FeatureSet",
    "FileSource",
    "Latest",
    "OnlineFeatures",
    "Project",
    "RequestSource",
    "SqlSource",
    "TrainingSet",
    "Transform",
    "Window",
    "build_training_set",
    "load_project",
]
