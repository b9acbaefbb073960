"""GET /v1/predictions/{request_id} on a real server: the stored record for the admin,
401 for anyone else, 404 naming an id the log does not hold."""

from __future__ import annotations

from pathlib import Path

from stalwart.config import Settings
from stalwart.monitoring.records import Chain, encode_record
from stalwart.monitoring.sinks.sql import SqlSink
from tests.monitoring.records_factory import full_record
from tests.servers import start_server


def test_a_record_is_served_to_the_admin_only(settings: Settings) -> None:
    """With the admin token: 200 and the record's JSON exactly as stored; without a token or
    with a wrong one: 401 (before any lookup); an unknown id: 404 naming it."""
    record = Chain("replica-a").link(full_record(7))
    other = full_record(8, status=503, error="Overloaded")
    sink = SqlSink.from_settings(settings)
    try:
        sink.write([record, other], [encode_record(record), encode_record(other)])
    finally:
        sink.close()
    token = settings.resolved_admin_token()
    admin = {"Authorization": f"Bearer {token}"}
    # The records are dated 2023: the server's retention (30 days) would delete them.
    with start_server(settings.model_copy(update={"prediction_log_retention_days": None})) as server:
        response = server.get(f"/v1/predictions/{record.request_id}", headers=admin)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.content == encode_record(record)
        assert server.get(f"/v1/predictions/{other.request_id}", headers=admin).json()["error"] == "Overloaded"

        missing = server.get("/v1/predictions/req-nope", headers=admin)
        assert missing.status_code == 404
        assert "req-nope" in missing.json()["error"]

        anonymous = server.get(f"/v1/predictions/{record.request_id}")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert "features" not in anonymous.text
        wrong = server.get(f"/v1/predictions/{record.request_id}", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_a_server_whose_log_is_off_says_so(home: Path) -> None:
    """With STALWART_PREDICTION_LOG=off the route exists and answers 404 saying why."""
    settings = Settings(home=home, prediction_log="off")
    with start_server(settings) as server:
        response = server.get("/v1/predictions/r1", headers={"Authorization": f"Bearer {settings.resolved_admin_token()}"})
        assert response.status_code == 404
        assert "cannot be read back" in response.json()["error"]
