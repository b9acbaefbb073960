"""The feature engine over the declarations of :mod:`stalwart.project`: training sets and
online features computed from the same definitions, writes that invalidate cached values,
and the parity check that proves the two paths agree.

>>> from stalwart.features import build_training_set, write  # doctest: +SKIP
>>> training = build_training_set(events, [activity], label="is_fraud")  # doctest: +SKIP
>>> write(transactions, rows)  # insert, then drop the touched entities' cached features  # doctest: +SKIP
"""

from stalwart.features.online import OnlineFeatures
from stalwart.features.training import TrainingSet, build_training_set
from stalwart.features.writes import WriteResult, awrite, write

__all__ = [
    "OnlineFeatures",
    "TrainingSet",
    "WriteResult",
    "awrite",
    "build_training_set",
    "write",
]
