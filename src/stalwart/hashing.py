"""Canonical JSON and hash chains: the bytes a chained record's hash is taken over.

A hash chain is only as good as the agreement, between the writer and every later
verifier, on which bytes were hashed. :func:`canonical_json` fixes them: keys sorted at
every level, no whitespace, floats in shortest round-trip form (so a float read back from
a database hashes to the same bytes it was written with), NaN and infinities as ``null``.
:func:`chain_hash` is ``sha256(prev_hash + canonical_json(value))`` as hex.

It sits at the bottom layer so that the storage migrations (which chain rows that existed
before chaining did) and the registry's audit log hash with one definition.

>>> canonical_json({"b": 1, "a": [0.1, 2.0]})
b'{"a":[0.1,2.0],"b":1}'
>>> chain_hash(GENESIS, {"a": 1})[:12]
'fc6cee09194d'
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

__all__ = ["GENESIS", "canonical_json", "chain_hash", "normalise"]

GENESIS = "0" * 64  # the "previous hash" of a chain's first link

_encoder = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON bytes (see the module docstring)."""
    return _encoder.encode(value)


def normalise(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, mapping keys strings),
    so that what is stored and what is hashed are the same value."""
    return msgspec.json.decode(msgspec.json.encode(value))


def chain_hash(prev_hash: str, value: Any) -> str:
    """The hash of the link holding ``value``, after the link whose hash is ``prev_hash``."""
    return hashlib.sha256(prev_hash.encode() + canonical_json(value)).hexdigest()
