"""What a PromQL query names, read by a real PromQL parser (promql-parser, Rust): the
metrics it selects and the label names it matches or groups by. A query that is not valid
PromQL (a typo, an unknown function) raises."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import promql_parser

# Grafana's interval variables stand where PromQL wants a duration; any duration parses.
_DURATION_VARIABLES = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")


@dataclass
class Query:
    """The metrics a query selects (selector name -> label names its matchers use) and
    the label names it groups or matches on (``by``, ``without``, ``on``, ``ignoring``)."""

    selectors: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)
    unnamed: list[str] = field(default_factory=list)  # selectors without a metric name


def parse(expr: str) -> Query:
    """``expr`` parsed; Grafana's ``$__rate_interval`` and kin read as a duration (other
    variables only ever stand inside label values, which are strings to PromQL)."""
    tree = promql_parser.parse(_DURATION_VARIABLES.sub("5m", expr))
    query = Query()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers}
            if node.name is None:
                query.unnamed.append(str(node))
            else:
                query.selectors.setdefault(node.name, set()).update(labels)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            query.grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None:
                query.grouping.update(matching.labels)
            query.grouping.update(node.modifier.group_labels or ())

    promql_parser.walk(tree, visit)
    return query
