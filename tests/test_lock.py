"""uv.lock agrees with pyproject.toml.

`make test` installs from uv.lock, not from the ranges in pyproject.toml. Were the two to
disagree, the suite would pass against versions that library users (who install from the
ranges) can never get, or miss a dependency that users do get. These tests read both files
with tomllib, offline. After editing pyproject.toml, run `make lock` (or `uv lock`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
FIX = "pyproject.toml and uv.lock disagree: run `make lock` (or `uv lock`) and commit uv.lock"

# One declared requirement, comparable across the two files:
# (name, extras, specifier, marker), each normalised.
Decl = tuple[str, frozenset[str], str, str]


def _load(name: str) -> dict[str, Any]:
    with (ROOT / name).open("rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return _load("pyproject.toml")


@pytest.fixture(scope="module")
def lock() -> dict[str, Any]:
    return _load("uv.lock")


def _decl(name: str, extras: Iterable[str], specifier: str, marker: str | None) -> Decl:
    return (
        canonicalize_name(name),
        frozenset(canonicalize_name(e) for e in extras),
        str(SpecifierSet(specifier)),
        str(Marker(marker)) if marker else "",
    )


def _from_pyproject(req: str, extra: str | None = None) -> Decl:
    r = Requirement(req)
    marker = str(r.marker) if r.marker else None
    if extra is not None:
        marker = f"({marker}) and extra == '{extra}'" if marker else f"extra == '{extra}'"
    return _decl(r.name, r.extras, str(r.specifier), marker)


def _from_lock(entry: dict[str, Any]) -> Decl:
    return _decl(entry["name"], entry.get("extras", ()), entry.get("specifier", ""), entry.get("marker"))


def _root(pyproject: dict[str, Any], lock: dict[str, Any]) -> dict[str, Any]:
    name = canonicalize_name(pyproject["project"]["name"])
    (root,) = [p for p in lock["package"] if p["name"] == name and "editable" in p["source"]]
    return root


def test_lock_records_the_dependencies_and_extras_pyproject_declares(
    pyproject: dict[str, Any], lock: dict[str, Any]
) -> None:
    """What `make test` installs was resolved from exactly the dependencies, extras and
    Python range that `pip install stalwart[...]` users get from pyproject.toml."""
    project = pyproject["project"]
    declared = {_from_pyproject(r) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        declared |= {_from_pyproject(r, extra) for r in reqs}
    metadata = _root(pyproject, lock)["metadata"]
    locked = {_from_lock(e) for e in metadata["requires-dist"]}
    assert sorted(declared - locked) == [], f"in pyproject.toml only; {FIX}"
    assert sorted(locked - declared) == [], f"in uv.lock only; {FIX}"
    assert metadata["provides-extras"] == list(project["optional-dependencies"]), FIX
    assert SpecifierSet(lock["requires-python"]) == SpecifierSet(project["requires-python"]), FIX


def test_lock_records_the_dev_tools_pyproject_declares(
    pyproject: dict[str, Any], lock: dict[str, Any]
) -> None:
    """The tests, linters and type checker that `make test` runs are the ones the
    [dependency-groups] in pyproject.toml ask for."""
    declared = {
        group: sorted(_from_pyproject(r) for r in reqs)
        for group, reqs in pyproject["dependency-groups"].items()
    }
    requires_dev = _root(pyproject, lock)["metadata"].get("requires-dev", {})
    locked = {group: sorted(_from_lock(e) for e in reqs) for group, reqs in requires_dev.items()}
    assert locked == declared, FIX


def test_every_locked_version_is_inside_its_pyproject_range(
    pyproject: dict[str, Any], lock: dict[str, Any]
) -> None:
    """Every pinned version of a package pyproject.toml names is one its range allows, so a
    green `make test` speaks for versions library users can install too."""
    project = pyproject["project"]
    reqs = [*project["dependencies"]]
    for group in (project["optional-dependencies"], pyproject["dependency-groups"]):
        reqs += [r for rs in group.values() for r in rs]
    own = canonicalize_name(project["name"])
    locked: dict[str, list[str]] = {}
    for package in lock["package"]:
        locked.setdefault(package["name"], []).append(package["version"])

    outside = []
    for req in map(Requirement, reqs):
        name = canonicalize_name(req.name)
        if name == own:  # the `all` extra names stalwart's own extras
            continue
        assert name in locked, f"{req.name} is declared but not locked; {FIX}"
        outside += [
            f"{name}=={v} (pyproject: {req})"
            for v in locked[name]
            if not req.specifier.contains(Version(v), prereleases=True)
        ]
    assert outside == [], FIX
