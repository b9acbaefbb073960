"""``stalwart demo``: the whole path on real data, in one command.

Trains two real models on scikit-learn's bundled breast-cancer data (a logistic regression
and a gradient-boosted classifier), registers them as two versions of one model, starts
the server on the embedded defaults (SQLite, in-process everything), sends real Open
Inference Protocol requests, and shows what came back and how to do the same with curl.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from stalwart.cli.output import console
from stalwart.errors import NotReady

MODEL = "breast-cancer"
FRAUD_EXAMPLE = Path("examples/fraud")


@dataclass
class _Trained:
    label: str
    model: Any
    metrics: dict[str, float]


def run_demo(*, once: bool, port: int, home: Path) -> int:
    """Run the tour; returns the process exit code."""
    import numpy as np

    from stalwart.config import Settings
    from stalwart.monitoring.logs import configure_logging
    from stalwart.registry import Registry
    from stalwart.serving.app import create_app
    from stalwart.serving.server import build_server

    if home.exists():
        shutil.rmtree(home)
    # Rollouts judged at once (no 15 s lag: the demo's model answers in milliseconds).
    settings = Settings(
        home=home, log_format="json", log_level="warning", registry_poll_seconds=0.5,
        rollout_lag_seconds=1.0, routes_poll_seconds=0.2,
    )
    console.rule("[bold]Stalwart demo")
    console.print(f"registry: SQLite under [cyan]{home}/[/] (reset for this run)")

    x_train, x_test, y_train, y_test, feature_count = _data()
    trained = _train(x_train, y_train, x_test, y_test)
    registry = Registry.open(settings)
    table = Table("version", "model", "accuracy", "ROC AUC", "sha256")
    for item in trained:
        mv = registry.register(
            MODEL,
            item.model,
            sample=x_train[:50],
            metrics=item.metrics,
            tags={"algorithm": item.label, "dataset": "sklearn breast cancer"},
            description=f"{item.label} on the Wisconsin breast-cancer data",
        )
        table.add_row(str(mv.version), item.label, f"{item.metrics['accuracy']:.3f}",
                      f"{item.metrics['roc_auc']:.3f}", mv.sha256[:12] + "…")
    console.print(table)
    fraud = _fraud_setup(settings) if FRAUD_EXAMPLE.is_dir() else None

    configure_logging("json", "warning", stream=_Discard())
    port = port or _free_port()
    if not _port_free(settings.host, port):
        fallback = _free_port()
        console.print(f"port {port} is taken; using {fallback}")
        port = fallback
    app = create_app(settings, registry=registry, project=fraud.project if fraud else None)
    server = build_server(app, settings, port=port)
    thread = threading.Thread(target=server.run, name="stalwart-demo-server", daemon=True)
    thread.start()
    base = f"http://{settings.host}:{port}"
    try:
        _wait_ready(base)
        ok = _tour(base, x_test, y_test, feature_count, np)
        if fraud is not None:
            ok &= _fraud_tour(base, fraud)
            ok &= _monitoring_tour(base, app, fraud, settings)
            ok &= _rollout_tour(base, fraud, settings)
        console.print("\n[green]demo OK[/]" if ok else "\n[red]demo FAILED: see the responses above[/]")
    finally:
        if once:
            server.stop()
            thread.join(timeout=10)
    if once:
        return 0 if ok else 1
    console.print(f"\nserving on [bold]{base}[/] — Ctrl-C to stop")
    console.print(
        f"web console: [bold]{base}/ui[/] (log in with the admin token in {settings.admin_token_file()} "
        f"to see predictions and to pause, promote or roll back)", highlight=False,
    )
    try:
        while thread.is_alive():
            thread.join(timeout=0.5)
    except KeyboardInterrupt:
        server.stop()
        thread.join(timeout=10)
    return 0 if ok else 1


@dataclass
class _Fraud:
    project: Any
    card: int
    usual_amount: float
    recent: Any  # the last day's transactions (a DataFrame), to replay as traffic
    frame: Any  # every generated transaction, to train the next versions on


def _fraud_setup(settings: Any) -> _Fraud:
    """Generate card transactions up to now, train the fraud model from a point-in-time
    training set and register it (the example in examples/fraud)."""
    import datetime as dt
    import runpy

    from stalwart.project import load_project

    generator = runpy.run_path(str(FRAUD_EXAMPLE / "generate.py"))
    trainer = runpy.run_path(str(FRAUD_EXAMPLE / "train.py"))
    now = dt.datetime.now(tz=dt.UTC).replace(minute=0, second=0, microsecond=0)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("generating card transactions", total=3)
        frame = generator["generate"](n_cards=1500, days=45, end=now)
        generator["load"](frame, settings.resolved_db_url())
        progress.update(task, advance=1, description=f"loaded {len(frame):,} transactions into SQLite")
        mv, metrics = trainer["train"](frame, settings)
        progress.update(task, advance=2, description=f"trained and registered {mv.ref}")
    console.print(
        f"fraud model {mv.ref}: ROC AUC {metrics['roc_auc']:.3f}, average precision "
        f"{metrics['average_precision']:.3f} on the latest 20% of events; training set of "
        f"{int(metrics['training_rows']):,} events built in {metrics['training_set_seconds']:.2f} s"
    )
    recent = frame[frame["ts"] > frame["ts"].max() - 86_400]
    card = int(recent["card_id"].value_counts().index[0])
    usual = float(frame.loc[frame["card_id"] == card, "amount"].median())
    return _Fraud(load_project(FRAUD_EXAMPLE / "project.py"), card, usual, recent, frame)


def _fraud_tour(base: str, fraud: _Fraud) -> bool:
    body: dict[str, Any] = {
        "entities": [{"card_id": fraud.card}, {"card_id": fraud.card}],
        "values": [
            {"amount": round(fraud.usual_amount, 2), "merchant_category": "groceries"},
            {"amount": round(fraud.usual_amount * 9, 2), "merchant_category": "electronics"},
        ],
        "return_features": True,
    }
    result = _call("POST", f"{base}/v1/deployments/fraud/predict", body)
    console.print(f"\n[bold]POST /v1/deployments/fraud/predict[/] for card {fraud.card} → {result.status}")
    if result.status != 200:
        console.print(result.body)
        return False
    table = Table("feature", "usual purchase", "9x, electronics")
    rows = result.body["features"]
    for name in rows[0]:
        table.add_row(name, *(_short(r[name]) for r in rows))
    probabilities = [p["predict_proba"][1] for p in result.body["predictions"]]
    table.add_row("[bold]P(fraud)", *(f"[bold]{p:.3f}" for p in probabilities))
    console.print(table)
    console.print(f"model {result.body['model']['name']}:{result.body['model']['version']}, request {result.body['request_id']}")
    entities = json.dumps(body["entities"][:1])
    values = json.dumps(body["values"][1:])
    console.print("[bold]try it yourself[/]:", highlight=False)
    console.print(
        f"curl -s -X POST {base}/v1/deployments/fraud/predict -H 'Content-Type: application/json' "
        f"-d '{{\"entities\": {entities}, \"values\": {values}, \"return_features\": true}}'",
        highlight=False, soft_wrap=True,
    )
    return bool(probabilities[1] > probabilities[0])


def _monitoring_tour(base: str, app: Any, fraud: _Fraud, settings: Any) -> bool:
    """Replay a stretch of ordinary traffic, then one where electronics purchases cost three
    times as much: the project's drift alert (examples/fraud/project.py) fires on the
    features that moved, and the HTML report shows them against the training data."""
    import datetime as dt

    from stalwart.monitoring.report import build_report
    from stalwart.monitoring.report_document import ReportDocument, sorted_columns
    from stalwart.monitoring.report_html import render_html

    alerting = app.state.alerting
    live = app.state.live_profiles
    if alerting is None or live is None:
        console.print("[red]monitoring: the fraud project declares no alert, or live profiles are off[/]")
        return False
    usual = fraud.recent.sample(n=min(600, len(fraud.recent)), random_state=1)
    shifted = fraud.recent.sample(n=min(600, len(fraud.recent)), random_state=2).assign(
        merchant_category="electronics", amount=lambda f: f["amount"] * 3
    )
    console.print("\n[bold]monitoring[/]: 600 ordinary transactions, then 600 electronics purchases at 3x the amount")
    began = dt.datetime.now(dt.UTC)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("ordinary traffic", total=None)
        if not _replay(base, usual):
            return False
        live.flush()  # write this minute's profile now rather than when the minute ends
        quiet = alerting.engine.evaluate()
        progress.update(task, description="shifted traffic")
        if not _replay(base, shifted):
            return False
        live.flush()
        fired = alerting.engine.evaluate()
    before = sorted(t.column for t in quiet if t.to_state.value == "firing")
    firing = sorted(t.column for t in fired if t.to_state.value == "firing")
    console.print(f"alert 'amount-drift' (PSI of amount_to_mean_30d > 0.25 over the last hour) after "
                  f"ordinary traffic: {', '.join(before) or 'quiet'}")
    table = Table("feature", "method", "score", "drifted")
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    doc = ReportDocument.from_dict(build_report(app.state.registry.db, "fraud", began - dt.timedelta(hours=1), until, settings=settings))
    for column in sorted_columns(doc.drift.columns)[:6]:
        score = "-" if column.score is None else f"{column.score:.2f}"
        table.add_row(column.column, column.method, score, "yes" if column.drifted else "no")
    console.print(f"after the shift, firing on: [bold red]{', '.join(firing) or 'nothing'}[/]")
    console.print(table)
    path = settings.home / "fraud-monitoring.html"
    path.write_text(render_html(doc), encoding="utf-8")
    console.print(f"report: [bold]{path}[/] (open it in a browser; `stalwart monitor report --deployment fraud` makes one)")
    return bool(firing) and not before


# The demo's rollouts: two quick steps judged on a few hundred requests, so only clear
# differences are decided (a real plan is the project's: 5, 25, 50 % over minutes).
_DEMO_PLAN: dict[str, Any] = {
    "steps": [0.25, 0.5],
    "min_seconds": 2,
    "min_requests": 60,
    "look_seconds": 0.5,
    "rules": {
        "error_rate": {"tolerance": 0.05, "min_n": 60},
        "degradation_rate": {"tolerance": 0.05, "min_n": 60},
        "violation_rate": {"tolerance": 0.05, "min_n": 60},
        "latency": {"tolerance": 0.7, "min_n": 60},
        "score_shift": {"tolerance": 0.1, "min_n": 60},
        "tail_latency": None,
        "accuracy": None,
    },
}


def _rollout_tour(base: str, fraud: _Fraud, settings: Any) -> bool:
    """Retrain the fraud model and roll the new version out as a canary: judged against
    the primary on live traffic, it is promoted step by step. Then a deliberately broken
    version (trained on flipped labels) goes out and the controller rolls it back."""
    import runpy

    from stalwart.registry import Registry
    from stalwart.rollout.history import RolloutHistory
    from stalwart.rollout.report_html import render
    from stalwart.rollout.rollouts import RolloutStore

    trainer = runpy.run_path(str(FRAUD_EXAMPLE / "train.py"))
    token = {"Authorization": f"Bearer {settings.resolved_admin_token()}"}
    console.print("\n[bold]rollouts[/]: a retrained version goes out as a canary; then a broken one")
    outcomes, ids = [], []
    for label, frame in (("retrained", fraud.frame), ("broken: trained on flipped labels", fraud.frame.assign(is_fraud=1 - fraud.frame["is_fraud"]))):
        mv, _ = trainer["train"](frame, settings)
        started = _call("POST", f"{base}/v1/deployments/fraud/rollout", {"canary": mv.ref, "plan": _DEMO_PLAN, "reason": f"demo: {label}"}, token)
        if started.status != 201:
            console.print(f"[red]rollout of {mv.ref} did not start: {started.status} {started.body}[/]")
            return False
        ids.append(int(started.body["rollout"]["id"]))
        state = _drive(base, fraud, f"{mv.ref} ({label})")
        rollout = state["rollout"]
        style = "green" if rollout["state"] == "promoted" else "bold red"
        console.print(f"{mv.ref} ({label}): [{style}]{rollout['state']}[/] — {rollout['reason']}", highlight=False)
        outcomes.append(rollout["state"])
    registry = Registry.open(settings)
    try:
        store = RolloutStore(registry.db)
        for found in map(store.get, ids):
            path = settings.home / f"fraud-rollout-{found.id}.html"
            path.write_text(render(RolloutHistory.from_rows(found.to_dict(), store.events(found.id))), encoding="utf-8")
            console.print(f"report: [bold]{path}[/] (`stalwart rollout report fraud` makes one)")
    finally:
        registry.db.dispose()
    return outcomes == ["promoted", "rolled_back"]


def _drive(base: str, fraud: _Fraud, what: str, timeout: float = 90.0) -> dict[str, Any]:
    """Replay transactions one per request while the controller judges, until it decides."""
    rows = fraud.recent.sample(frac=1.0, random_state=3).to_dict("records")
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"rolling out {what}", total=None)
        i = 0
        while time.monotonic() < deadline:
            for _ in range(25):
                r = rows[i % len(rows)]
                i += 1
                body = {"entities": [{"card_id": int(r["card_id"])}], "values": [{"amount": round(float(r["amount"]), 2), "merchant_category": str(r["merchant_category"])}]}
                _call("POST", f"{base}/v1/deployments/fraud/predict", body)
            state = _call("GET", f"{base}/v1/deployments/fraud/rollout?events=0").body
            rollout = state["rollout"]
            progress.update(task, description=f"rolling out {what}: {rollout['state']} at {rollout['weight']:.0%}, {i} requests")
            if rollout["state"] not in ("running", "paused"):
                break
    return state


def _replay(base: str, frame: Any, batch: int = 20) -> bool:
    """POST the transactions in ``frame`` as /v1/deployments/fraud/predict requests."""
    rows = frame.to_dict("records")
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        body = {
            "entities": [{"card_id": int(r["card_id"])} for r in chunk],
            "values": [{"amount": round(float(r["amount"]), 2), "merchant_category": str(r["merchant_category"])} for r in chunk],
        }
        result = _call("POST", f"{base}/v1/deployments/fraud/predict", body)
        if result.status != 200:
            console.print(f"[red]replay failed: {result.status} {result.body}[/]")
            return False
    return True


def _short(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _data() -> tuple[Any, Any, Any, Any, int]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=7, stratify=y)
    return x_train, x_test, y_train, y_test, x.shape[1]


def _train(x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> list[_Trained]:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    candidates = [
        ("logistic regression", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
        ("gradient boosting", GradientBoostingClassifier(random_state=7)),
    ]
    results = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        for label, model in candidates:
            task = progress.add_task(f"training {label}", total=1)
            model.fit(x_train, y_train)
            proba = model.predict_proba(x_test)[:, 1]
            metrics = {
                "accuracy": float(accuracy_score(y_test, model.predict(x_test))),
                "roc_auc": float(roc_auc_score(y_test, proba)),
            }
            results.append(_Trained(label, model, metrics))
            progress.update(task, completed=1, description=f"trained {label}")
    return results


def _tour(base: str, x_test: Any, y_test: Any, feature_count: int, np: Any) -> bool:
    rows = x_test[:3]
    body: dict[str, Any] = {
        "id": "demo-1",
        "inputs": [{"name": "input-0", "shape": [3, feature_count], "datatype": "FP64", "data": rows.ravel().tolist()}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    ok = True
    meta = _call("GET", f"{base}/v2/models/{MODEL}")
    console.print(f"\n[bold]GET /v2/models/{MODEL}[/] → {meta.status}: serves version "
                  f"{meta.body.get('versions')}, input {meta.body['inputs'][0]['shape']} {meta.body['inputs'][0]['datatype']}")
    table = Table("version", "row", "truth", "predict", "P(benign)")
    for version in ("1", "2"):
        result = _call("POST", f"{base}/v2/models/{MODEL}/versions/{version}/infer", body)
        ok &= result.status == 200
        outputs = {o["name"]: o for o in result.body["outputs"]}
        proba = np.asarray(outputs["predict_proba"]["data"]).reshape(outputs["predict_proba"]["shape"])
        for i in range(len(rows)):
            table.add_row(version, str(i), str(int(y_test[i])), str(outputs["predict"]["data"][i]), f"{proba[i, 1]:.3f}")
    console.print(f"\n[bold]POST /v2/models/{MODEL}/versions/{{1,2}}/infer[/] (3 rows each)")
    console.print(table)
    latest = _call("POST", f"{base}/v2/models/{MODEL}/infer", body)
    ok &= latest.status == 200 and latest.body.get("model_version") == "2"
    console.print(f"unversioned infer → model_version {latest.body.get('model_version')}, "
                  f"X-Request-ID {latest.headers.get('x-request-id')}")
    bad = dict(body, inputs=[dict(body["inputs"][0], shape=[3, feature_count + 1])])
    refused = _call("POST", f"{base}/v2/models/{MODEL}/infer", bad)
    ok &= refused.status == 400
    console.print(f"\n[bold]a wrong shape[/] → {refused.status} {refused.body}")
    metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()  # noqa: S310 - our own loopback server
    counted = [line for line in metrics.splitlines() if line.startswith("stalwart_requests_total{")]
    console.print("\n[bold]GET /metrics[/] (request counters):")
    for line in counted:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    example = json.dumps({"inputs": [{"name": "input-0", "shape": [1, feature_count], "datatype": "FP64",
                                      "data": [round(v, 4) for v in x_test[0].tolist()]}]})
    console.print("\n[bold]try it yourself[/]:")
    for command in (
        f"curl -s {base}/v2/models/{MODEL}",
        f"curl -s -X POST {base}/v2/models/{MODEL}/infer -H 'Content-Type: application/json' -d '{example}'",
        f"curl -s {base}/metrics | grep stalwart_",
    ):
        console.print(command, highlight=False, soft_wrap=True)
    return ok


@dataclass
class _Reply:
    status: int
    body: Any
    headers: dict[str, str]


def _call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> _Reply:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})  # noqa: S310 - our own loopback server
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own loopback server
            return _Reply(response.status, json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()})
    except urllib.error.HTTPError as exc:
        return _Reply(exc.code, json.loads(exc.read()), {k.lower(): v for k, v in exc.headers.items()})


def _wait_ready(base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _call("GET", f"{base}/v2/health/ready").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise NotReady(f"the demo server at {base} did not become ready in {timeout:.0f} s; see its log above")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class _Discard:
    """A stream for the server's logs during the tour, which prints its own story."""

    buffer: Any = None

    def __init__(self) -> None:
        self.buffer = self

    def write(self, _data: Any) -> int:
        return 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
