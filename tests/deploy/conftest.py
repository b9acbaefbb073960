"""One real server for the deploy tests, started once: a deployment with a canary, a shadow
and an alert rule, its models registered, a little traffic served, and what ``/metrics``
then exports, read with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stalwart.config import Settings
from stalwart.project import Alert, Deployment, Project, RequestSource
from stalwart.registry import Registry
from stalwart.serving.app import create_app
from tests.faults import Switchable, set_mode
from tests.servers import LiveServer, start_server

SOURCE = RequestSource("txn", fields={"amount": "float"})
SAMPLE = pd.DataFrame({"amount": [float(i) for i in range(60)]})
# The series names a family of each type is exported as (``_created`` left out: no panel
# has a use for it). prometheus_client's parser names a counter family without ``_total``.
_SERIES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


@dataclass
class Family:
    """One exported metric family: its type, the series names it is exported as, and the
    label names its samples carry (empty while it has no sample yet)."""

    name: str
    type: str
    series: tuple[str, ...]
    labels: set[str] = field(default_factory=set)
    sampled: bool = False


@dataclass
class Exported:
    """What the server exports, and the server itself (still running)."""

    server: LiveServer
    families: dict[str, Family]

    def family_of(self, series: str) -> Family | None:
        """The family a series name belongs to (``stalwart_requests_total`` → ``stalwart_requests``)."""
        for family in self.families.values():
            if series in family.series:
                return family
        return None


def _exercise(server: LiveServer) -> None:
    """Traffic that gives most families samples: /v2 inference (requests, latency,
    batching), /v1 predictions through the canary and the shadow (validation, routes,
    shadow calls), a bad request and an unknown route (errors by status)."""
    infer = {"inputs": [{"name": "amount", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 2.0]}]}
    for _ in range(5):
        assert server.post("/v2/models/canaried/infer", json=infer).status_code == 200
    for entity in range(20):
        body = {"entities": [{"id": entity}], "values": [{"amount": float(entity)}]}
        assert server.post("/v1/deployments/payments/predict", json=body).status_code == 200
    assert server.post("/v2/models/canaried/infer", json={"inputs": []}).status_code == 400
    assert server.get("/v2/models/no-such-model").status_code == 404


def scrape(server: LiveServer) -> dict[str, Family]:
    """Every family ``/metrics`` exports, by name."""
    response = server.get("/metrics")
    assert response.status_code == 200
    families: dict[str, Family] = {}
    for parsed in text_string_to_metric_families(response.text):
        family = Family(parsed.name, parsed.type, tuple(parsed.name + suffix for suffix in _SERIES[parsed.type]))
        for sample in parsed.samples:
            family.sampled = True
            family.labels.update(sample.labels)
        families[parsed.name] = family
    return families


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """The server, exercised, and the families it exports."""
    home: Path = tmp_path_factory.mktemp("deploy") / "home"
    settings = Settings(home=home, registry_poll_seconds=0.2, log_format="json", python_modules=("tests",))
    registry = Registry.open(settings)
    set_mode("canaried", "ok")
    registry.register("canaried", Switchable("canaried", 1.0), sample=SAMPLE)
    registry.register("canaried", Switchable("canaried", 2.0), sample=SAMPLE)
    deployment = Deployment(
        "payments", model="canaried:1", canary="canaried:2", canary_weight=0.3,
        shadows={"next": {"model": "canaried:2", "rate": 1.0}}, features=[SOURCE.amount],
    )
    alert = Alert("amount-drift", "payments", "psi", column="*", threshold=0.25, window="1h", for_="10m")
    project = Project.of(deployment, SOURCE, alert)
    try:
        with start_server(settings, app=create_app(settings, registry=registry, project=project)) as server:
            _exercise(server)
            yield Exported(server, scrape(server))
    finally:
        registry.db.dispose()
