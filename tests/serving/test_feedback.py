"""POST /v1/feedback on a real server: labels by request id and by entity and time join
the prediction log (SQLite and PostgreSQL); bad items are a 422 naming the item's field;
no token is a 401; every batch is in the audit log."""

from __future__ import annotations

from typing import Any

import pytest

from stalwart.config import Settings
from stalwart.monitoring.quality import quality_over_time
from stalwart.monitoring.records import PredictionRecord
from stalwart.monitoring.sinks.sql import SqlSink
from stalwart.registry import Registry
from stalwart.registry.audit import verify_audit
from stalwart.storage import Database
from tests.servers import start_server
from tests.serving.conftest import FraudCopy, poll, predict_body, recent_card

HOUR = 3_600 * 10**9
T0 = 1_700_000_000 * 10**9 - (1_700_000_000 * 10**9) % HOUR


def _records() -> list[PredictionRecord]:
    return [
        PredictionRecord(
            request_id=f"req-{i}", time_ns=T0 + i * 10**9, entrypoint="/v1", status=200, latency_ms=1.0,
            deployment="fraud", variant="primary", rows=2, entities=[{"card_id": i}, {"card_id": 100 + i}],
            outputs={"predict": [0, 1], "predict_proba": [[0.9, 0.1], [0.3, 0.7]]},
        )
        for i in range(4)
    ]


def _admin(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.resolved_admin_token()}"}


def test_labels_by_request_id_and_by_entity_join_the_log(any_db_settings: Settings) -> None:
    """A batch of labels by request id (and row) and by deployment, entity and ISO time:
    every one accepted, those whose prediction is logged counted as matched, and the
    quality of the window sees them; sending a label again replaces it."""
    database = Database(any_db_settings.resolved_db_url())
    try:
        SqlSink(database).write(_records(), None)
        # The records are dated 2023: the server's retention (30 days) would delete them.
        settings = any_db_settings.model_copy(update={"prediction_log_retention_days": None})
        body = {
            "deployment": "fraud",
            "items": [
                {"request_id": "req-0", "label": 0},
                {"request_id": "req-0", "row": 1, "label": 1},
                {"entity": {"card_id": 101}, "time": "2023-11-14T22:00:03Z", "label": 0},  # req-1, row 1, 2 s away
                {"request_id": "req-not-logged-yet", "label": 1},
            ],
        }
        with start_server(settings) as server:
            response = server.post("/v1/feedback", json=body, headers=_admin(settings))
            assert response.status_code == 200, response.text
            assert response.json() == {"accepted": 4, "matched": 3, "unmatched": 1}
            again = server.post("/v1/feedback", json={"items": [{"request_id": "req-1", "row": 1, "label": 1}]}, headers=_admin(settings))
            assert again.json() == {"accepted": 1, "matched": 1, "unmatched": 0}
            events = Registry.open(settings)
            try:
                logged = list(reversed(events.events(action="feedback.write")))
                assert verify_audit(events.db) is None
            finally:
                events.db.dispose()
            assert [(e["actor"], e["subject"], e["detail"]) for e in logged] == [
                ("admin", "fraud", {"accepted": 4, "matched": 3, "unmatched": 1}),
                ("admin", "*", {"accepted": 1, "matched": 1, "unmatched": 0}),
            ]

        window = quality_over_time(database, "fraud", since=T0, until=T0 + HOUR, now_ns=T0 + 2 * HOUR)[0]
        # Three labelled rows: req-0 row 0 (0, predicted 0), row 1 (1, predicted 1), and
        # req-1 row 1 by entity, then relabelled by request id: 1 (predicted 1). All right.
        assert (window.predictions, window.labelled) == (8, 3)
        assert window.realised["accuracy"] == 1.0
    finally:
        database.dispose()


BAD_ITEMS: list[tuple[Any, str]] = [
    ({"request_id": "req-0"}, "items[1].label"),
    ({"request_id": "req-0", "label": None}, "items[1].label"),
    ({"request_id": "req-0", "label": [1]}, "items[1].label"),
    ({"request_id": "req-0", "label": "x" * 300}, "items[1].label"),
    ({"request_id": "", "label": 1}, "items[1].request_id"),
    ({"request_id": "req-0", "row": -1, "label": 1}, "items[1].row"),
    ({"request_id": "req-0", "row": 2, "label": 1}, "items[1].row"),  # req-0 scored 2 rows
    ({"request_id": "req-0", "lable": 1}, "items[1].lable"),
    ({"entity": {"card_id": 1}, "time": "2023-11-14T21:00:00Z", "label": 1}, "items[1].deployment"),
    ({"deployment": "fraud", "entity": {"card_id": 1}, "label": 1}, "items[1].time"),
    ({"deployment": "fraud", "entity": {"card_id": 1}, "time": "2023-11-14T21:00:00", "label": 1}, "items[1].time"),
    ({"deployment": "fraud", "entity": {"card_id": [1]}, "time": 5, "label": 1}, "items[1].entity.card_id"),
    ({"deployment": "fraud", "entity": {}, "time": 5, "label": 1}, "items[1].entity"),
    ({"deployment": "no such/name", "entity": {"card_id": 1}, "time": 5, "label": 1}, "items[1].deployment"),
    ({"label": 1}, "items[1].request_id"),
    ("label", "items[1]"),
]


def test_bad_items_are_a_422_naming_the_field_and_nothing_is_stored(settings: Settings) -> None:
    """Each malformed item (second in its batch) is a 422 whose ``field`` names it, and
    the batch's good first item is not stored either; no token is a 401 before anything
    is read; a batch over the limit is a 422 on ``items``; malformed JSON is a 400."""
    database = Database(settings.resolved_db_url())
    try:
        SqlSink(database).write(_records(), None)
    finally:
        database.dispose()
    settings = settings.model_copy(update={"prediction_log_retention_days": None, "feedback_max_items": 5})
    good = {"request_id": "req-1", "label": 1}
    with start_server(settings) as server:
        for item, field in BAD_ITEMS:
            response = server.post("/v1/feedback", json={"items": [good, item]}, headers=_admin(settings))
            assert response.status_code == 422, (item, response.text)
            assert response.json()["field"] == field, (item, response.json())
            assert field in response.json()["error"]
        nobody = server.post("/v1/feedback", json={"items": [good]})
        assert nobody.status_code == 401
        assert server.post("/v1/feedback", json={"items": [good]}, headers={"Authorization": "Bearer nope"}).status_code == 401
        too_many = server.post("/v1/feedback", json={"items": [good] * 6}, headers=_admin(settings))
        assert (too_many.status_code, too_many.json()["field"]) == (422, "items")
        broken = server.post("/v1/feedback", content=b'{"items": [', headers={**_admin(settings), "content-type": "application/json"})
        assert (broken.status_code, broken.json()["field"]) == (400, "body")
        missing = server.post("/v1/feedback", json={"labels": []}, headers=_admin(settings))
        assert (missing.status_code, missing.json()["field"]) == (400, "items")
    database = Database(settings.resolved_db_url())
    try:
        window = quality_over_time(database, "fraud", since=T0, until=T0 + HOUR, now_ns=T0 + 2 * HOUR)[0]
        assert window.labelled == 0
    finally:
        database.dispose()


def test_a_live_prediction_is_labelled_by_its_request_id(fraud_copy: FraudCopy) -> None:
    """The fraud example end to end: predict, wait for the record to reach the log, label
    it by the request id the answer carried: matched, and its window has one labelled row."""
    settings = fraud_copy.settings
    card = recent_card(fraud_copy.frame)
    with start_server(settings) as server:
        answer = server.post("/v1/deployments/fraud/predict", json=predict_body(card))
        assert answer.status_code == 200, answer.text
        request_id = answer.json()["request_id"]
        predicted = answer.json()["predictions"][0]["predict"]
        assert poll(lambda: server.get(f"/v1/predictions/{request_id}", headers=_admin(settings)).status_code == 200, 10)
        response = server.post("/v1/feedback", json={"items": [{"request_id": request_id, "label": predicted}]}, headers=_admin(settings))
        assert response.json() == {"accepted": 1, "matched": 1, "unmatched": 0}
    database = Database(settings.resolved_db_url())
    try:
        windows = quality_over_time(database, "fraud", since="1h", bucket="2h")
    finally:
        database.dispose()
    assert sum(w.labelled for w in windows) == 1
    assert [w.realised["accuracy"] for w in windows if w.labelled] == [1.0]


@pytest.mark.parametrize("label", [True, "fraud", 0.5, -3])
def test_numbers_strings_and_booleans_are_labels(settings: Settings, label: Any) -> None:
    """Any JSON number, string or boolean is a label, stored as sent."""
    with start_server(settings) as server:
        response = server.post("/v1/feedback", json={"items": [{"request_id": "r1", "label": label}]}, headers=_admin(settings))
        assert response.json() == {"accepted": 1, "matched": 0, "unmatched": 1}
