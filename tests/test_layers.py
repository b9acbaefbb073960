"""The import graph has no cycles and no upward imports: the layering rule of
docs/architecture.md ("Layers"), checked over every module under src/stalwart.

Imports are read with ``ast``, at module level and inside functions alike (a lazy import is
still a dependency); imports under ``if TYPE_CHECKING:`` are left out (they never run).
An import of ``a.b.c`` is an edge to the module ``a.b.c`` (or the nearest package that
exists); the parent packages Python runs on the way are not edges. Names imported by
``importlib`` from strings (the lazy exports of ``stalwart`` and ``stalwart.cache``, model
flavors) are not seen: each stays inside its own package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stalwart

PACKAGE = Path(stalwart.__file__).resolve().parent

# The layers, bottom (0) to top; a module may import modules of a lower layer, or of its
# own layer without a cycle. Mirrors the table in docs/architecture.md: change both.
LAYERS: dict[str, int] = {
    # the bottom: leaf modules and the declarations
    "stalwart.errors": 0,
    "stalwart.config": 0,
    "stalwart.pipeline": 0,
    "stalwart.durations": 0,
    "stalwart.sizes": 0,
    "stalwart.hashing": 0,
    "stalwart._version": 0,
    "stalwart._optional": 0,
    "stalwart.project": 0,
    # shared plumbing
    "stalwart.storage": 1,
    # the middle layer
    "stalwart.registry": 2,
    "stalwart.features": 2,
    "stalwart.validation": 2,
    "stalwart.cache": 2,
    "stalwart.resilience": 2,
    "stalwart.monitoring": 2,
    # above it
    "stalwart.rollout": 3,
    "stalwart.offline": 3,
    "stalwart.serving": 4,
    "stalwart.cli": 5,
    "stalwart.__main__": 5,
    # the top: the package face and the functions it exports; nothing inside imports them
    "stalwart.api": 6,
    "stalwart": 6,
}

# Which middle-layer packages import which (docs/architecture.md lists the same edges): a
# new one is a design decision, so it fails here until it is written down.
MIDDLE_EDGES: set[tuple[str, str]] = {
    ("cache", "monitoring"),
    ("features", "cache"),
    ("features", "monitoring"),
    ("features", "resilience"),
    ("registry", "monitoring"),
    ("registry", "validation"),
    ("validation", "monitoring"),
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module an imported name lands in: itself, or the nearest package holding it."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> set[str]:
    """Every stalwart module ``module`` imports, at any depth, outside TYPE_CHECKING blocks."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str | None] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.Import):
                out.update(_resolve(alias.name) for alias in child.names if alias.name.split(".")[0] == "stalwart")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package
                    for _ in range(child.level - 1):
                        base = base.rpartition(".")[0]
                    target = f"{base}.{child.module}" if child.module else base
                else:
                    target = child.module or ""
                if target.split(".")[0] == "stalwart":
                    for alias in child.names:
                        full = f"{target}.{alias.name}"
                        out.add(full if full in MODULES else _resolve(target))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    out.discard(module)
    out.discard(None)
    return {name for name in out if name is not None}


GRAPH: dict[str, set[str]] = {module: _imports(module, path) for module, path in MODULES.items()}


def _group(module: str) -> str:
    if module == "stalwart":
        return module
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return prefix
    raise AssertionError(f"module {module} has no layer: add it to LAYERS here and to docs/architecture.md")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _cycle_path(component: list[str], graph: dict[str, set[str]]) -> str:
    """One concrete cycle inside a component, for the failure message."""
    members = set(component)
    path = [component[0]]
    while True:
        nxt = sorted(graph[path[-1]] & members)[0]
        if nxt in path:
            return " -> ".join([*path[path.index(nxt):], nxt])
        path.append(nxt)


def test_every_module_has_a_layer() -> None:
    """A new package or bottom module is placed in the layers on purpose."""
    for module in MODULES:
        _group(module)


def test_there_are_no_import_cycles() -> None:
    """No module depends on itself through others, lazily or not."""
    cycles = [_cycle_path(c, GRAPH) for c in _cycles(GRAPH)]
    assert cycles == [], "import cycles: " + "; ".join(cycles)


def test_no_package_imports_upward() -> None:
    """Every import goes down the layers (or sideways within one, see the cycle test)."""
    upward = sorted(
        f"{module} -> {target} ({_group(module)} is layer {LAYERS[_group(module)]}, {_group(target)} is {LAYERS[_group(target)]})"
        for module, targets in GRAPH.items()
        for target in targets
        if LAYERS[_group(target)] > LAYERS[_group(module)]
    )
    assert upward == []


def test_nothing_inside_imports_the_package_face() -> None:
    """``stalwart/__init__.py`` and ``stalwart/api.py`` are on top: no module imports them."""
    importers = sorted(m for m, targets in GRAPH.items() for t in targets if t in ("stalwart", "stalwart.api") and m != "stalwart")
    assert importers == []


def test_the_middle_layer_edges_are_the_documented_ones() -> None:
    """registry, features, validation, cache, resilience and monitoring import each other
    only along the edges docs/architecture.md lists."""
    edges = {
        (_group(m).split(".")[1], _group(t).split(".")[1])
        for m, targets in GRAPH.items()
        for t in targets
        if LAYERS[_group(m)] == LAYERS[_group(t)] == 2 and _group(m) != _group(t)
    }
    assert edges == MIDDLE_EDGES


def test_the_graph_reader_sees_lazy_imports_and_skips_type_checking() -> None:
    """The checks above would be blind without this: a function-level import is an edge,
    a TYPE_CHECKING one is not."""
    assert "stalwart.features.caching" in GRAPH["stalwart.features.online"]
    assert "stalwart.cache.cache" in GRAPH["stalwart.features.writes"]  # imported inside awrite
    assert "stalwart.cache.cache" not in GRAPH["stalwart.features.notify"]  # TYPE_CHECKING only


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, ["a -> b -> a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, ["a -> b -> c -> a"]),
    ],
)
def test_the_cycle_finder_names_the_cycle(graph: dict[str, set[str]], expected: list[str]) -> None:
    """A cycle is reported as the path that closes it."""
    assert [_cycle_path(c, graph) for c in _cycles(graph)] == expected


def test_docs_architecture_lists_every_module() -> None:
    """docs/architecture.md's module table stays true to the code: every module is in it
    (by path, or by name under its package's row)."""
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for path in MODULES.values():
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and rel.parent != Path():
            continue  # a package's public names: its modules are listed
        listed = f"`{rel.as_posix()}`" in doc or (f"`{rel.parent.as_posix()}/`" in doc and f"`{rel.name}`" in doc)
        if not listed:
            missing.append(rel.as_posix())
    assert missing == []
