"""One local cluster for the module: three replicas of the fraud example behind nginx, on a
PostgreSQL database and a Redis namespace of its own (tests/local_cluster.py, the code
``make cluster`` runs). The example is generated small and its model trained with few
trees, and its deployment sheds load only past 5 s of queue wait (the suite's machine is
shared; tests/resilience tests shedding): the tests are about the cluster."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from stalwart.config import Settings
from stalwart.registry import Registry
from stalwart.storage.tables import predictions
from tests.conftest import PG_HOST, PG_PORT, PG_USER, REDIS_URL
from tests.local_cluster import LocalCluster, fraud_project, load_fraud
from tests.serving.conftest import recent_card

# Polls short enough for a test to wait on: a new version within 0.5 s, a route within 0.2 s.
REPLICA_ENV = {
    "STALWART_REGISTRY_POLL_SECONDS": "0.5",
    "STALWART_ROUTES_POLL_SECONDS": "0.2",
    "STALWART_DRAIN_SECONDS": "2",  # the readiness watch has it out of rotation well within (0.3-0.5 s measured)
    "STALWART_GRACEFUL_SHUTDOWN_SECONDS": "5",
}


@dataclass
class FraudCluster:
    cluster: LocalCluster
    settings: Settings
    frame: Any  # the transactions loaded into the cluster's database
    cards: list[int]  # recently active cards, to predict for

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cluster.token}"}

    def ensure_running(self) -> None:
        """Start again any replica an earlier test left stopped (the cheaper way round:
        restarting costs a replica's start, so only a test that needs all three pays it)."""
        for i, replica in enumerate(self.cluster.replicas):
            if replica.process is None or replica.process.poll() is not None:
                self.cluster.restart(i)

    def recorded(self, request_ids: list[str]) -> dict[str, int]:
        """How many prediction records each of ``request_ids`` has in PostgreSQL (absent: none)."""
        registry = Registry.open(self.settings)
        try:
            with registry.db.read() as conn:
                rows = conn.execute(
                    select(predictions.c.request_id, func.count())
                    .where(predictions.c.request_id.in_(request_ids))
                    .group_by(predictions.c.request_id)
                ).all()
        finally:
            registry.db.dispose()
        return {str(request_id): int(count) for request_id, count in rows}


@pytest.fixture(scope="module")
def fraud_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FraudCluster]:
    directory: Path = tmp_path_factory.mktemp("cluster")
    with LocalCluster(
        directory, project=fraud_project(directory), env=REPLICA_ENV,
        pg_admin_url=f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres", redis_url=REDIS_URL,
    ) as cluster:
        settings = cluster.settings()
        fraud = load_fraud(settings, cards=300, days=40, max_iter=10, seed=11)
        cluster.start()
        cards = [recent_card(fraud["frame"], rank) for rank in range(40)]
        yield FraudCluster(cluster, settings, fraud["frame"], cards)
