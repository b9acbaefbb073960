"""Each flavor registers a model, loads it back from its verified artifact, predicts exactly as
the original did, and describes its signature from a sample (or from the model itself)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from stalwart.cli.main import app
from stalwart.config import Settings
from stalwart.errors import FlavorError, UntrustedArtifactError
from stalwart.registry import ModelVersion, Registry
from stalwart.registry.flavors import LoadPolicy, Predictor, detect_flavor, get_flavor
from tests.models import AddOne, HoldsAFunction, Linear


@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """A small binary classification problem (5 features, 200 rows)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 3] > 0).astype(np.int64)
    return x, y


def _load(registry: Registry, mv: ModelVersion) -> Predictor:
    """The version as a server would load it: from the artifact on disk, sha256 checked."""
    again = registry.get(mv.name, mv.version)
    assert again == mv
    return registry.load(again)


def _specs(mv: ModelVersion) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    sig = mv.signature
    return (
        [(t.name, t.datatype, t.shape) for t in sig.inputs],
        [(t.name, t.datatype, t.shape) for t in sig.outputs],
    )


# --- scikit-learn -------------------------------------------------------------------------


def test_sklearn_pipeline_round_trips_with_skops(registry: Registry, logistic: Any, cancer: dict[str, Any]) -> None:
    """A scikit-learn pipeline is stored with skops (no pickle) and predicts the same."""
    mv = registry.register("lr", logistic, sample=cancer["x_train"][:10])
    assert (mv.flavor, mv.trust) == ("sklearn", None)
    assert registry.artifacts.path_of(mv.artifact_file).read_bytes()[:2] == b"PK"  # a skops zip
    x = cancer["x_test"][:20]
    out = _load(registry, mv).predict({"input-0": x}, ["predict", "predict_proba"])
    np.testing.assert_array_equal(out["predict"], logistic.predict(x))
    np.testing.assert_array_equal(out["predict_proba"], logistic.predict_proba(x))
    assert _specs(mv) == (
        [("input-0", "FP64", [-1, 30])],
        [("predict", "INT64", [-1]), ("predict_proba", "FP64", [-1, 2])],
    )


def test_gradient_boosting_tree_type_is_trusted_automatically(registry: Registry, boosted: Any, cancer: dict[str, Any]) -> None:
    """A tree ensemble holds scikit-learn's Cython Tree type, which skops does not trust by
    default; it comes from scikit-learn itself, so it is trusted without being asked."""
    mv = registry.register("gb", boosted, sample=cancer["x_train"][:10])
    assert "sklearn.tree._tree.Tree" in mv.flavor_options["trusted_types"]
    x = cancer["x_test"][:20]
    out = _load(registry, mv).predict({"input-0": x}, ["predict", "predict_proba"])
    np.testing.assert_array_equal(out["predict"], boosted.predict(x))
    np.testing.assert_array_equal(out["predict_proba"], boosted.predict_proba(x))


def test_a_users_own_class_needs_trusted_types(registry: Registry, xy: Any) -> None:
    """A custom transformer is refused until named in trusted_types; the trust is recorded
    on the version and is what loading uses."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    x, y = xy
    model = make_pipeline(AddOne(), LogisticRegression()).fit(x, y)
    with pytest.raises(UntrustedArtifactError, match=r"trusted_types=\['tests.models.AddOne'\]"):
        registry.register("custom", model, sample=x[:5])
    mv = registry.register("custom", model, sample=x[:5], trusted_types=["tests.models.AddOne"])
    assert "tests.models.AddOne" in mv.flavor_options["trusted_types"]
    out = _load(registry, mv).predict({"input-0": x[:30]}, ["predict_proba"])
    np.testing.assert_array_equal(out["predict_proba"], model.predict_proba(x[:30]))
    assert mv.version == 1  # the refused attempt took no version number


def test_trust_pickle_is_recorded_and_required_to_load(registry: Registry, xy: Any) -> None:
    """trust_pickle=True stores a pickle and records trust='pickle'; the same bytes without
    that trust are refused, never unpickled."""
    from sklearn.linear_model import LogisticRegression

    x, y = xy
    model = LogisticRegression().fit(x, y)
    mv = registry.register("pickled", model, sample=x[:5], trust_pickle=True)
    assert mv.trust == "pickle"
    np.testing.assert_array_equal(_load(registry, mv).predict({"input-0": x}, ["predict"])["predict"], model.predict(x))
    data = registry.artifacts.read_verified(mv.artifact_file, mv.sha256)
    with pytest.raises(UntrustedArtifactError, match="trust_pickle=True"):
        get_flavor("sklearn").deserialize(data, {}, trust=None)


def test_sklearn_signature_without_a_sample(registry: Registry, cancer: dict[str, Any]) -> None:
    """A fitted model knows its inputs: feature names from a DataFrame become named FP64
    columns; classes give predict's datatype and predict_proba's width."""
    from sklearn.tree import DecisionTreeClassifier

    frame = cancer["frame_train"]
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(frame, cancer["y_train"])
    mv = registry.register("tree", model)
    inputs, outputs = _specs(mv)
    assert [name for name, _, _ in inputs] == list(frame.columns)
    assert {(dt, tuple(shape)) for _, dt, shape in inputs} == {("FP64", (-1,))}
    assert outputs == [("predict", "INT64", [-1]), ("predict_proba", "FP64", [-1, 2]), ("predict_log_proba", "FP64", [-1, 2])]
    x = cancer["frame_test"][:10]
    columns = {name: x[name].to_numpy() for name in frame.columns}
    got = _load(registry, mv).predict(columns, ["predict"])
    np.testing.assert_array_equal(got["predict"], model.predict(x))


def test_sklearn_regressor_signature_from_a_sample(registry: Registry, xy: Any) -> None:
    """With a sample, the outputs are described by calling the model on it (a regressor
    fitted on float32 predicts float32)."""
    from sklearn.linear_model import Ridge

    x, y = xy
    model = Ridge().fit(x.astype(np.float32), y.astype(np.float64))
    mv = registry.register("ridge", model, sample=x[:4].astype(np.float32))
    assert _specs(mv) == ([("input-0", "FP32", [-1, 5])], [("predict", "FP32", [-1])])
    got = _load(registry, mv).predict({"input-0": x[:9].astype(np.float32)}, ["predict"])
    np.testing.assert_array_equal(got["predict"], model.predict(x[:9].astype(np.float32)))


# --- ONNX ---------------------------------------------------------------------------------


def _affine_onnx() -> Any:
    """An ONNX graph built by hand: y = x @ W + b over 3 features."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1.0], [2.0], [-1.0]], dtype=np.float32), "W")
    b = numpy_helper.from_array(np.array([0.5], dtype=np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=[w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_onnx_model_proto_round_trips(registry: Registry) -> None:
    """An onnx.ModelProto is stored as is; its signature comes from the graph, no sample needed."""
    proto = _affine_onnx()
    assert detect_flavor(proto).name == "onnx"
    mv = registry.register("affine", proto)
    assert _specs(mv) == ([("x", "FP32", [-1, 3])], [("y", "FP32", [-1, 1])])
    x = np.array([[1, 1, 1], [0, 2, -1]], dtype=np.float32)
    got = _load(registry, mv).predict({"x": x}, ["y"])
    np.testing.assert_allclose(got["y"], x @ np.array([[1.0], [2.0], [-1.0]], dtype=np.float32) + 0.5)


def test_sklearn_converted_to_onnx_predicts_like_sklearn(registry: Registry, xy: Any) -> None:
    """flavor='onnx' with a scikit-learn classifier converts it with skl2onnx (tensor outputs,
    no zipmap); labels match and probabilities agree to float32 precision."""
    from sklearn.linear_model import LogisticRegression

    x, y = xy
    model = LogisticRegression().fit(x, y)
    mv = registry.register("lr-onnx", model, flavor="onnx", sample=x[:5])
    inputs, outputs = _specs(mv)
    assert inputs == [("X", "FP32", [-1, 5])]
    assert [name for name, _, _ in outputs] == ["label", "probabilities"]
    x32 = x[:40].astype(np.float32)
    got = _load(registry, mv).predict({"X": x32}, ["label", "probabilities"])
    np.testing.assert_array_equal(got["label"], model.predict(x32))
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(x32), rtol=1e-4, atol=1e-6)


def test_onnx_conversion_needs_a_sample(registry: Registry, xy: Any) -> None:
    """Converting to ONNX needs to know the input width: without a sample it says so."""
    from sklearn.linear_model import LogisticRegression

    x, y = xy
    with pytest.raises(FlavorError, match="needs sample="):
        registry.register("no-sample", LogisticRegression().fit(x, y), flavor="onnx")


# --- LightGBM and XGBoost -----------------------------------------------------------------


def test_lightgbm_booster_round_trips(registry: Registry, xy: Any) -> None:
    """A LightGBM Booster is stored as LightGBM text; its input width is known without a sample."""
    import lightgbm as lgb

    x, y = xy
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y), num_boost_round=10)
    mv = registry.register("lgb-booster", booster)
    assert mv.flavor == "lightgbm"
    assert registry.artifacts.path_of(mv.artifact_file).read_text().startswith("tree")
    assert _specs(mv) == ([("input-0", "FP64", [-1, 5])], [("predict", "FP64", [-1])])
    got = _load(registry, mv).predict({"input-0": x[:25]}, ["predict"])
    np.testing.assert_allclose(got["predict"], booster.predict(x[:25]))


def test_lightgbm_classifier_answers_labels_and_probabilities(registry: Registry, cancer: dict[str, Any]) -> None:
    """LGBMClassifier keeps its classes: predict answers labels, predict_proba one column
    per class, as the wrapper itself does; DataFrame feature names become input names."""
    import lightgbm as lgb

    frame = cancer["frame_train"]
    model = lgb.LGBMClassifier(n_estimators=10, verbose=-1, n_jobs=1).fit(frame, cancer["y_train"])
    mv = registry.register("lgb-clf", model)
    inputs, outputs = _specs(mv)
    assert [name for name, _, _ in inputs] == [c.replace(" ", "_") for c in frame.columns]
    assert outputs == [("predict", "INT64", [-1]), ("predict_proba", "FP64", [-1, 2])]
    x = cancer["x_test"][:30]
    columns = {name: x[:, i] for i, (name, _, _) in enumerate(inputs)}
    got = _load(registry, mv).predict(columns, ["predict", "predict_proba"])
    test_frame = cancer["frame_test"][:30]
    np.testing.assert_array_equal(got["predict"], model.predict(test_frame))
    np.testing.assert_allclose(got["predict_proba"], model.predict_proba(test_frame))
    from_sample = registry.register("lgb-clf", model, sample=x[:3])
    assert _specs(from_sample)[0] == [("input-0", "FP64", [-1, 30])]


def test_xgboost_booster_round_trips(registry: Registry, xy: Any) -> None:
    """An XGBoost Booster is stored as UBJSON and scores like the original."""
    import xgboost as xgb

    x, y = xy
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, y), num_boost_round=10)
    mv = registry.register("xgb-booster", booster)
    assert (mv.flavor, mv.flavor_options["objective"]) == ("xgboost", "binary:logistic")
    assert _specs(mv) == ([("input-0", "FP64", [-1, 5])], [("predict", "FP64", [-1])])
    got = _load(registry, mv).predict({"input-0": x[:25]}, ["predict"])
    np.testing.assert_allclose(got["predict"], booster.predict(xgb.DMatrix(x[:25])), rtol=1e-6)


def test_xgboost_classifier_answers_labels_and_probabilities(registry: Registry, xy: Any) -> None:
    """XGBClassifier (three classes) answers labels and per-class probabilities like the
    wrapper; the signature comes from the sample when one is given."""
    import xgboost as xgb

    x, _ = xy
    y3 = np.digitize(x[:, 0], [-0.5, 0.5])
    model = xgb.XGBClassifier(n_estimators=10, n_jobs=1).fit(x, y3)
    mv = registry.register("xgb-clf", model, sample=x[:4].astype(np.float32))
    assert _specs(mv) == (
        [("input-0", "FP32", [-1, 5])],
        [("predict", "INT64", [-1]), ("predict_proba", "FP64", [-1, 3])],
    )
    x32 = x[:30].astype(np.float32)
    got = _load(registry, mv).predict({"input-0": x32}, ["predict", "predict_proba"])
    np.testing.assert_array_equal(got["predict"], model.predict(x32))
    np.testing.assert_allclose(got["predict_proba"], model.predict_proba(x32), rtol=1e-6)


@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
def test_multiclass_booster_signature_has_one_column_per_class(registry: Registry, xy: Any, library: str) -> None:
    """A bare multiclass Booster scores one column per class; its signature says so, with or
    without a sample, and matches what it answers."""
    x, _ = xy
    y3 = np.digitize(x[:, 0], [-0.5, 0.5])
    if library == "lightgbm":
        import lightgbm as lgb

        booster: Any = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y3), num_boost_round=5)
    else:
        import xgboost as xgb

        booster = xgb.train({"objective": "multi:softprob", "num_class": 3, "nthread": 1}, xgb.DMatrix(x, y3), num_boost_round=5)
    for sample in (None, x[:3]):
        mv = registry.register(f"multi-{library}", booster, sample=sample)
        assert _specs(mv)[1] == [("predict", "FP64", [-1, 3])]
        assert _load(registry, mv).predict({"input-0": x[:4]}, ["predict"])["predict"].shape == (4, 3)


# --- a plain Python class -----------------------------------------------------------------


def test_python_class_with_numpy_attributes_round_trips(registry: Registry) -> None:
    """A class with predict is saved as JSON (import path + attributes, numpy arrays with
    their dtype), never pickled, and restored on load."""
    model = Linear(np.array([1.0, -2.0, 0.5]), bias=3.0)
    assert detect_flavor(model).name == "python"
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    mv = registry.register("linear", model, sample=x)
    assert (mv.flavor, mv.trust) == ("python", None)
    assert b'"class":"tests.models:Linear"' in registry.artifacts.path_of(mv.artifact_file).read_bytes()
    assert _specs(mv) == ([("input-0", "FP64", [-1, 3])], [("predict", "FP64", [-1])])
    got = _load(registry, mv).predict({"input-0": x}, ["predict"])
    np.testing.assert_array_equal(got["predict"], model.predict(x))


def test_python_class_needs_a_sample_or_a_signature(registry: Registry) -> None:
    """A plain class cannot describe its inputs: without a sample or a signature it says so;
    an explicit signature works."""
    model = Linear(np.ones(2), 0.0)
    with pytest.raises(FlavorError, match="pass sample="):
        registry.register("nosig", model)
    signature = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}], "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}]}
    mv = registry.register("nosig", model, signature=signature)
    assert _specs(mv) == ([("x", "FP64", [-1, 2])], [("predict", "FP64", [-1])])


def test_python_class_from_a_script_or_a_function_is_refused(registry: Registry) -> None:
    """A class in __main__ or inside a function cannot be imported by a server: refused,
    with the way out."""

    class Local:
        def predict(self, x: Any) -> Any:
            return x

    with pytest.raises(FlavorError, match="cannot import it"):
        registry.register("local", Local(), sample=np.zeros((2, 2)))
    script_class = type("Script", (), {"__module__": "__main__", "predict": lambda self, x: x})
    with pytest.raises(FlavorError, match=r"defined in a script.*trust_pickle=True"):
        registry.register("script", script_class(), sample=np.zeros((2, 2)))


def test_python_class_holding_code_needs_trust_pickle(registry: Registry) -> None:
    """Attributes that are not data are refused unless the user trusts a pickle."""
    x = np.ones((2, 3))
    with pytest.raises(FlavorError, match="cannot save HoldsAFunction's attributes as data"):
        registry.register("fn", HoldsAFunction(), sample=x)
    mv = registry.register("fn", HoldsAFunction(), sample=x, trust_pickle=True)
    assert mv.trust == "pickle"
    np.testing.assert_array_equal(_load(registry, mv).predict({"input-0": x}, ["predict"])["predict"], [3.0, 3.0])


def test_python_class_that_no_longer_imports_is_a_flavor_error(registry: Registry) -> None:
    """An artifact naming a class the server cannot import fails as a FlavorError (served as
    503 with this message), not an ImportError."""
    flavor = get_flavor("python")
    policy = LoadPolicy(python_modules=("no_such_module_xyz", "tests"))
    for document in (b'{"class": "no_such_module_xyz:Model", "state": {}}', b'{"class": "tests.models:Gone", "state": {}}'):
        with pytest.raises(FlavorError, match="install the code that defines it"):
            flavor.deserialize(document, {}, trust=None, policy=policy)


def test_undetectable_models_ask_for_a_flavor(registry: Registry) -> None:
    """An object no flavor recognises is refused, listing the flavors."""
    with pytest.raises(FlavorError, match="pass flavor="):
        registry.register("what", object())
    with pytest.raises(FlavorError, match="unknown flavor 'tensorflow'"):
        registry.register("what", object(), flavor="tensorflow")


# --- artifact files through `stalwart models register` ------------------------------------


@pytest.fixture
def cli_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STALWART_HOME", str(home))
    monkeypatch.delenv("STALWART_DB_URL", raising=False)
    return home


def _cli_register(name: str, path: Path, flavor: str, *extra: str) -> None:
    result = CliRunner().invoke(app, ["models", "register", name, str(path), "--flavor", flavor, *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"registered {name}:" in result.output


def test_every_artifact_file_format_registers_from_the_cli(cli_home: Path, tmp_path: Path, xy: Any) -> None:
    """`stalwart models register NAME FILE --flavor F` takes a .skops file, a pickle or joblib
    file (with --trust-pickle), an .onnx file, LightGBM text, XGBoost UBJSON and JSON; each
    loads back and predicts like the original."""
    import joblib
    import lightgbm as lgb
    import skl2onnx
    import skops.io as sio
    import xgboost as xgb
    from sklearn.linear_model import LogisticRegression

    x, y = xy
    clf = LogisticRegression().fit(x, y)
    booster_lgb = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y), num_boost_round=5)
    booster_xgb = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, y), num_boost_round=5)

    files = {
        "skops": tmp_path / "m.skops",
        "pickle": tmp_path / "m.pkl",
        "joblib": tmp_path / "m.joblib",
        "onnx": tmp_path / "m.onnx",
        "lgb": tmp_path / "m.lgb.txt",
        "ubj": tmp_path / "m.ubj",
        "xgbjson": tmp_path / "m.json",
    }
    sio.dump(clf, files["skops"])
    files["pickle"].write_bytes(pickle.dumps(clf))
    joblib.dump(clf, files["joblib"], compress=3)
    onx = skl2onnx.to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}})
    files["onnx"].write_bytes(onx.SerializeToString())
    booster_lgb.save_model(files["lgb"])
    booster_xgb.save_model(files["ubj"])
    booster_xgb.save_model(files["xgbjson"])

    _cli_register("skops", files["skops"], "sklearn", "--metric", "auc=0.9", "--tag", "team=risk")
    _cli_register("pickle", files["pickle"], "sklearn", "--trust-pickle")
    _cli_register("joblib", files["joblib"], "sklearn", "--trust-pickle")
    _cli_register("onnx", files["onnx"], "onnx")
    _cli_register("lgb", files["lgb"], "lightgbm")
    _cli_register("ubj", files["ubj"], "xgboost")
    _cli_register("xgbjson", files["xgbjson"], "xgboost")

    registry = Registry.open(Settings(home=cli_home))
    try:
        sample = x[:12]
        want_proba = clf.predict_proba(sample)
        for name in ("skops", "pickle", "joblib"):
            mv = registry.get(name)
            assert mv.trust == (None if name == "skops" else "pickle"), name
            got = registry.load(mv).predict({"input-0": sample}, ["predict_proba"])
            np.testing.assert_array_equal(got["predict_proba"], want_proba)
        assert registry.get("skops").metrics == {"auc": 0.9}
        assert registry.get("skops").tags == {"team": "risk"}
        got = registry.load(registry.get("onnx")).predict({"X": sample.astype(np.float32)}, ["probabilities"])
        np.testing.assert_allclose(got["probabilities"], want_proba, rtol=1e-4, atol=1e-6)
        got = registry.load(registry.get("lgb")).predict({"input-0": sample}, ["predict"])
        np.testing.assert_allclose(got["predict"], booster_lgb.predict(sample))
        for name in ("ubj", "xgbjson"):
            got = registry.load(registry.get(name)).predict({"input-0": sample}, ["predict"])
            np.testing.assert_allclose(got["predict"], booster_xgb.predict(xgb.DMatrix(sample)), rtol=1e-6)

    finally:
        registry.db.dispose()


def test_cli_refuses_a_pickle_without_trust(cli_home: Path, tmp_path: Path, xy: Any) -> None:
    """A pickle given as a scikit-learn file without --trust-pickle is refused with the flag
    to pass, and nothing is registered."""
    from sklearn.linear_model import LogisticRegression

    x, y = xy
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression().fit(x, y)))
    result = CliRunner().invoke(app, ["models", "register", "m", str(path), "--flavor", "sklearn"])
    assert result.exit_code != 0
    assert isinstance(result.exception, UntrustedArtifactError)
    assert "--trust-pickle" in str(result.exception)
