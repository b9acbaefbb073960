"""`stalwart features parity` on the example project: passes as shipped, fails on skew."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stalwart.registry import Registry


def _parity(settings: Any, deployment: str, project: Path, samples: int = 40) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STALWART_HOME": str(settings.home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "stalwart", "features", "parity", "--deployment", deployment,
         "--project", str(project), "--sample", str(samples)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )


def test_parity_passes_on_the_example_project(fraud_home: dict[str, Any]) -> None:
    """Offline and online agree on every feature of the fraud deployment: exit 0."""
    result = _parity(fraud_home["settings"], "fraud", fraud_home["root"] / "project.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "parity OK" in result.stdout
    assert "amount_to_mean_30d" in result.stdout


SKEWED = '''
import numpy as np
from stalwart import CallableSource, Deployment, Entity, FeatureSet, Latest, SqlSource

card = Entity("card", keys=["card_id"])
history = SqlSource("transactions", table="transactions", entity=card, timestamp="ts")


def live_lookup(keys):
    # The online service rounds amounts up to whole dollars; the offline table does not.
    return {key: {"amount": 1.0 + int(key[0] % 7)} for key in keys}


live = CallableSource("card_live", fn=live_lookup, entity=card, offline=history)
latest = FeatureSet("latest_purchase", entity=card, source=live, features=[Latest("last_amount", column="amount", default=0.0)])
skewed = Deployment("skewed", model="skewed", features=[latest])
'''


def test_parity_fails_on_a_deliberately_skewed_definition(fraud_home: dict[str, Any], tmp_path: Path) -> None:
    """An external lookup that disagrees with its offline counterpart is caught: the
    feature is listed with its mismatches and the command exits 1."""
    from sklearn.dummy import DummyClassifier

    settings = fraud_home["settings"]
    registry = Registry.open(settings)
    sample = pd.DataFrame({"last_amount": np.linspace(1, 100, 20)})
    registry.register("skewed", DummyClassifier().fit(sample, np.arange(20) % 2), sample=sample)
    registry.db.dispose()
    project = tmp_path / "skewed_project.py"
    project.write_text(SKEWED)
    result = _parity(settings, "skewed", project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "last_amount" in result.stdout
    assert "1 feature(s) differ between training and serving" in result.stderr
