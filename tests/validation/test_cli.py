"""``stalwart validate`` and ``stalwart schema ...`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stalwart.cli.main import app
from stalwart.config import Settings
from stalwart.registry import Registry

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A registry with model ``shop:1`` (schema inferred from its training frame) and files."""
    from sklearn.linear_model import LogisticRegression

    home = tmp_path / "home"
    monkeypatch.setenv("STALWART_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    rng = np.random.default_rng(11)
    n = 300
    frame = pd.DataFrame(
        {
            "amount": rng.uniform(1, 100, n),
            "items": rng.integers(1, 10, n),
            "country": rng.choice(["fr", "de", "it"], n),
        }
    )
    model = LogisticRegression().fit(frame[["amount", "items"]], rng.integers(0, 2, n))
    registry = Registry.open(Settings(home=home))
    from stalwart.validation.schema import infer_schema

    mv = registry.register("shop", model, sample=frame[["amount", "items"]])
    strict = infer_schema(frame, default_policy="reject").model_copy(update={"margin": 0.0})
    registry.schemas.attach("shop", mv.version, strict, note="with country")
    registry.db.dispose()
    clean = tmp_path / "clean.csv"
    frame.to_csv(clean, index=False)
    broken = frame.copy()
    broken.loc[7, "amount"] = 5000.0
    broken.loc[9, "country"] = "xx"
    broken.loc[11, "items"] = 99
    broken_csv = tmp_path / "broken.csv"
    broken.to_csv(broken_csv, index=False)
    broken_parquet = tmp_path / "broken.parquet"
    broken.to_parquet(broken_parquet)
    return {"clean": clean, "csv": broken_csv, "parquet": broken_parquet, "tmp": tmp_path, "home": home}


def test_clean_data_passes_with_status_zero(project: dict[str, Any]) -> None:
    result = runner.invoke(app, ["validate", str(project["clean"]), "--model", "shop"])
    assert result.exit_code == 0, result.output
    assert "all 300 rows pass" in result.output


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_broken_data_is_summarised_by_feature_and_rule_and_exits_one(project: dict[str, Any], kind: str) -> None:
    """The table names feature, rule, policy, count and example rows; a reject rule broken
    means status 1, whether read from CSV or Parquet, in chunks or not."""
    result = runner.invoke(app, ["validate", str(project[kind]), "--model", "shop:1", "--chunk-rows", "50"])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "amount" in out
    assert "range" in out
    assert "7: 5000.0" in out
    assert "country" in out
    assert "category" in out
    assert "9: 'xx'" in out
    assert "11: 99" in out
    assert "3 value(s) break a reject rule" in out


def test_overrides_that_fix_or_flag_exit_zero(project: dict[str, Any]) -> None:
    result = runner.invoke(
        app,
        ["validate", str(project["csv"]), "--model", "shop", "--default-policy", "flag", "--policy", "amount=clip", "--json"],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert (body["rows"], body["violations"], body["rejected"]) == (300, 3, 0)
    assert {(r["feature"], r["rule"], r["action"]) for r in body["by_rule"]} == {
        ("amount", "range", "clipped"), ("items", "range", "flagged"), ("country", "category", "flagged"),
    }
    assert body["by_rule"][0]["examples"] == [{"row": 7, "value": 5000.0}]


def test_compare_sets_new_data_beside_the_schema(project: dict[str, Any]) -> None:
    """Before retraining: ranges, nulls, new categories and columns added or gone."""
    frame = pd.read_csv(project["csv"])
    frame.loc[50:90, "amount"] = np.nan
    frame["channel"] = "web"
    newer = project["tmp"] / "newer.csv"
    frame.drop(columns=["items"]).to_csv(newer, index=False)
    result = runner.invoke(app, ["validate", str(newer), "--model", "shop", "--compare", "--json"])
    assert result.exit_code == 1
    compare = {entry["feature"]: entry for entry in json.loads(result.output)["compare"]}
    assert "beyond the training range" in compare["amount"]["status"]
    assert "nulls where training had none" in compare["amount"]["status"]
    assert compare["amount"]["nulls_data"] == pytest.approx(41 / 300, abs=1e-6)
    assert compare["items"]["status"] == "missing from the data"
    assert compare["country"]["new_categories"] == 1
    assert compare["country"]["new_examples"] == ["xx"]
    assert compare["channel"]["status"] == "not in the schema"
    table = runner.invoke(app, ["validate", str(newer), "--model", "shop", "--compare"])
    assert "compared with the schema" in table.output
    assert "1 new categories" in table.output


def test_export_edit_attach_list_activate(project: dict[str, Any]) -> None:
    """The edit loop a person follows, ending with the edited schema serving."""
    path = project["tmp"] / "shop.yaml"
    result = runner.invoke(app, ["schema", "export", "shop", "-o", str(path)])
    assert result.exit_code == 0, result.output
    text = path.read_text()
    assert text.startswith("# Input schema of model shop:1, revision 2 (edited, active).")
    path.write_text(text.replace("default_policy: reject", "default_policy: flag"))
    result = runner.invoke(app, ["schema", "attach", "shop:1", str(path), "--note", "flag everything"])
    assert result.exit_code == 0, result.output
    assert "attached revision 3" in result.output
    listing = runner.invoke(app, ["schema", "list", "shop"])
    assert listing.exit_code == 0
    assert "flag everything" in listing.output
    assert "active" in listing.output
    assert runner.invoke(app, ["validate", str(project["csv"]), "--model", "shop"]).exit_code == 0
    assert runner.invoke(app, ["schema", "activate", "shop", "1"]).exit_code == 0
    inferred = runner.invoke(app, ["schema", "export", "shop:1", "--format", "json"])
    assert json.loads(inferred.output)["features"].keys() == {"amount", "items"}


def test_errors_are_one_line_with_what_to_do(project: dict[str, Any]) -> None:
    bad = project["tmp"] / "bad.yaml"
    bad.write_text("features:\n  amount: {kind: numeric, min: 5, max: 1}\n")
    result = runner.invoke(app, ["schema", "attach", "shop", str(bad)])
    assert result.exit_code == 1
    assert "feature 'amount': field 'min' (5.0) is above field 'max' (1.0)" in result.output
    result = runner.invoke(app, ["schema", "activate", "shop", "7"])
    assert result.exit_code == 1
    assert "stalwart schema list shop:1" in result.output
    result = runner.invoke(app, ["validate", str(project["csv"]), "--model", "nope"])
    assert result.exit_code == 1
    assert "stalwart models list" in result.output
    result = runner.invoke(app, ["validate", str(project["csv"]), "--model", "shop", "--policy", "amount=ignore"])
    assert result.exit_code == 1
    assert "a policy is one of reject, impute, clip, flag" in result.output
    text = project["tmp"] / "data.json"
    text.write_text("{}")
    result = runner.invoke(app, ["validate", str(text), "--model", "shop"])
    assert result.exit_code == 1
    assert "give a .csv or .parquet file" in result.output


def test_infer_a_schema_from_a_file_then_attach_it(project: dict[str, Any]) -> None:
    out = project["tmp"] / "inferred.yaml"
    result = runner.invoke(app, ["schema", "infer", str(project["clean"]), "-o", str(out), "--chunk-rows", "70", "--margin", "0.2"])
    assert result.exit_code == 0, result.output
    assert "3 features (300 rows)" in result.output
    from stalwart.validation.schema import Schema

    schema = Schema.from_file(out)
    assert schema.margin == 0.2
    assert schema.rows == 300
    assert schema.features["country"].kind == "categorical"
    assert runner.invoke(app, ["schema", "attach", "shop", str(out)]).exit_code == 0
