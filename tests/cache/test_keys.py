"""Cache keys: stable, compact, versioned, and one key per distinct entity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalwart.cache.keys import KeySpace, encode_entity, escape_name
from stalwart.errors import ConfigError, RequestError

scalars = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
)
entity_keys = st.lists(scalars, min_size=1, max_size=3).map(tuple)


def test_keys_are_readable_and_carry_the_version() -> None:
    """A key names the namespace, FeatureSet, version and entity, so it is debuggable."""
    space = KeySpace("stalwart", "fraud", "3f9a0c")
    assert space.key(encode_entity((17,))) == "stalwart:f1:fraud:3f9a0c:17"
    assert space.key(encode_entity(("card", 3))) == "stalwart:f1:fraud:3f9a0c:'card,3"


def test_a_new_version_never_shares_keys_with_the_old() -> None:
    """A changed definition (new version hash) reads none of the old version's values."""
    old, new = KeySpace("s", "fraud", "aaaa"), KeySpace("s", "fraud", "bbbb")
    assert not new.key("17").startswith(old.prefix)
    assert old.set_prefix == new.set_prefix


@given(entity_keys, entity_keys)
def test_equal_keys_encode_alike_and_different_keys_apart(a: tuple[object, ...], b: tuple[object, ...]) -> None:
    """Keys equal in Python (1, 1.0, True) share a cache entry; any other pair never collides."""
    assert (encode_entity(a) == encode_entity(b)) == (a == b)  # type: ignore[arg-type]


def test_numpy_scalars_encode_like_python_ones() -> None:
    """Entity keys taken from numpy/pandas columns hit the same entries as Python values."""
    assert encode_entity((np.int64(17),)) == encode_entity((17,))  # type: ignore[arg-type]
    assert encode_entity((np.float64(2.5),)) == encode_entity((2.5,))


def test_names_are_escaped_so_prefixes_stay_distinct() -> None:
    """A FeatureSet named with ':' or glob characters cannot alias another's keys."""
    assert escape_name("a:b*") == "a%3Ab%2A"
    assert KeySpace("s", "a:b", "v").prefix != KeySpace("s", "a", "b:v").prefix


def test_bad_parts_are_refused_with_a_clear_error() -> None:
    """Unsupported key parts and namespaces fail loudly instead of caching under junk keys."""
    with pytest.raises(RequestError, match="entity key part"):
        encode_entity(([1, 2],))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="namespace"):
        KeySpace("bad namespace", "fraud", "v1")
