"""deploy/grafana/stalwart.json against what a real server exports: every query is PromQL
naming only metrics the server exports (with the labels they carry), and every metric family
the server exports is on some panel. The family list comes from the live ``/metrics``, so a
metric added to the code without a panel fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import Exported, Family
from tests.deploy.promql import Query, parse

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "stalwart.json"
# Labels Prometheus gives every scraped series (the target's), and the bucket label.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container", "le"}
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str, Query]]:
    """(panel title, expression, parsed) for every panel target."""
    out = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"], parse(target["expr"])))
    return out


def _variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, Query]]:
    """The template variables' ``label_values(selector, label)``, their selector parsed."""
    out = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        text = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES.match(text)
        assert match, f"variable {variable['name']}: {text!r} is not label_values(selector, label)"
        query = parse(match["selector"])
        query.grouping.add(match["label"])
        out.append((f"variable {variable['name']}", text, query))
    return out


def _exported_families(exported: Exported) -> dict[str, Family]:
    """The families a panel must show: all but the ``_created`` companions prometheus_client
    exports beside each counter and histogram (the text format has no place for them)."""
    families = exported.families
    return {
        name: family for name, family in families.items()
        if not (name.endswith("_created") and name.removesuffix("_created") in families)
    }


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_query_is_promql_naming_only_exported_series(dashboard: dict[str, Any], exported: Exported) -> None:
    """A panel never shows "No data" because of a metric name the server does not export
    (a typo, a renamed metric, _total missing on a counter)."""
    problems = []
    for where, expr, query in [*_queries(dashboard), *_variable_queries(dashboard)]:
        if query.unnamed:
            problems.append(f"{where}: a selector without a metric name: {query.unnamed}")
        for series in query.selectors:
            if exported.family_of(series) is None:
                problems.append(f"{where}: {series} is not exported (in {expr})")
    assert not problems, "\n".join(problems)


def test_queries_use_labels_the_series_carry(dashboard: dict[str, Any], exported: Exported) -> None:
    """Matchers and groupings name labels the server's series have (or Prometheus adds), so
    `by (status)` is not silently `by (status_code)`. Label names are only seen on samples:
    a query is checked when the exercised server has samples of every family it reads."""
    problems = []
    checked = 0
    for where, _expr, query in [*_queries(dashboard), *_variable_queries(dashboard)]:
        families = [exported.family_of(series) for series in query.selectors]
        if not all(family is not None and family.sampled for family in families):
            continue
        checked += 1
        carried = set().union(*(f.labels for f in families if f is not None)) | TARGET_LABELS
        for series, labels in query.selectors.items():
            family = exported.family_of(series)
            assert family is not None
            unknown = labels - family.labels - TARGET_LABELS
            if unknown:
                problems.append(f"{where}: {series} has no label {sorted(unknown)} (it has {sorted(family.labels)})")
        if query.grouping - carried:
            problems.append(f"{where}: groups or matches by {sorted(query.grouping - carried)}, which its series do not carry")
    assert not problems, "\n".join(problems)
    assert checked >= 40, f"only {checked} queries had samples to check their labels against"


def test_every_exported_family_is_on_a_panel(dashboard: dict[str, Any], exported: Exported) -> None:
    """Whatever the server exports, an operator finds on the dashboard."""
    shown = {
        family.name
        for _where, _expr, query in _queries(dashboard)
        for series in query.selectors
        if (family := exported.family_of(series)) is not None
    }
    missing = sorted(set(_exported_families(exported)) - shown)
    assert not missing, f"exported but on no panel of {DASHBOARD.name}: {missing}"
    # The server under test was exercised: the families that carry the traffic have samples.
    for name in ("stalwart_requests", "stalwart_request_duration_seconds", "stalwart_batch_rows", "stalwart_validation_requests", "stalwart_route_canary_weight", "stalwart_shadow_answered"):
        assert exported.families[name].sampled, name


def test_the_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    """What Grafana needs to import it: a uid, unique panel ids, every panel and query on
    the datasource variable, and panels laid out on the 24-column grid without overlap."""
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every selector is scoped by the job and replica variables.
            for labels in parse(target["expr"]).selectors.values():
                assert {"job", "instance"} <= labels, f"{panel['title']}: {target['expr']}"
