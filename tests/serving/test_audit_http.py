"""Control calls through a real server land in the audit log under the name of the token
that made them, with counts and never row values; the server's start is recorded once."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import SecretStr

from stalwart.config import Settings
from stalwart.errors import ConfigError
from stalwart.registry import Registry
from stalwart.registry.audit import CONFIG_ACTION, process_actor, verify_audit
from stalwart.serving.auth import BearerAuth
from tests.servers import start_server
from tests.serving.conftest import FraudCopy

ROWS = "/v1/sources/transactions/rows"
INVALIDATE = "/v1/features/card_activity/invalidate"


def _named(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"admin_token": SecretStr("root-t0ken"), "admin_tokens": {"alice": SecretStr("alice-t0ken"), "ci-bot": SecretStr("ci-t0ken")}}
    )


def test_control_calls_are_recorded_with_the_token_name(fraud_copy: FraudCopy) -> None:
    """alice's token writes rows (recorded as alice, with counts), the admin token
    invalidates (recorded as admin), a wrong token is refused and records nothing; the
    server's settings are recorded at start by user@host, without any token."""
    settings = _named(fraud_copy.settings)
    row = {"card_id": 424242, "ts": time.time() - 1, "amount": 987.65, "merchant_category": "fuel", "is_fraud": 0}
    with start_server(settings) as server:
        written = server.post(ROWS, json={"rows": [row, {**row, "amount": 1.25}]}, headers={"Authorization": "Bearer alice-t0ken"})
        assert written.status_code == 200, written.text
        dropped = server.post(INVALIDATE, json={"entities": [{"card_id": 424242}]}, headers={"Authorization": "Bearer root-t0ken"})
        assert dropped.status_code == 200, dropped.text
        assert server.post(INVALIDATE, headers={"Authorization": "Bearer alice-t0ken"}).status_code == 200  # whole set
        refused = server.post(INVALIDATE, headers={"Authorization": "Bearer bob-t0ken"})
        assert refused.status_code == 401
    registry = Registry.open(settings)
    try:
        events = list(reversed(registry.events(limit=None)))
        # The server's own events (an alert the copied example's monitor may fire meanwhile)
        # are not control calls.
        control = [
            (e["actor"], e["action"], e["subject"], e["detail"])
            for e in events
            if e["action"] != CONFIG_ACTION and e["action"] != "register" and not e["action"].startswith(("schema.", "alert."))
        ]
        assert control == [
            ("alice", "source.write", "transactions", {"rows": 2, "entities": 1, "feature_sets": ["card_activity"], "invalidated": True}),
            ("admin", "features.invalidate", "card_activity", {"entities": 1, "invalidated": True}),
            ("alice", "features.invalidate", "card_activity", {"entities": None, "invalidated": True}),
        ]
        # The shared fraud home may hold the settings of servers other tests started on it:
        # this server's are the newest.
        configs = registry.events(action=CONFIG_ACTION)
        config = configs[0]
        assert config["actor"] == process_actor()
        assert config["detail"]["settings"]["admin_token_names"] == ["admin", "alice", "ci-bot"]
        everything = json.dumps(events)
        assert "t0ken" not in everything  # no token, named or not
        assert "987.65" not in everything  # no row values
        assert verify_audit(registry.db) is None
    finally:
        registry.db.dispose()
    with start_server(settings):  # the same settings again: not recorded twice
        pass
    registry = Registry.open(settings)
    try:
        assert len(registry.events(action=CONFIG_ACTION)) == len(configs)
    finally:
        registry.db.dispose()


def test_token_names_and_values_are_checked_at_start(settings: Settings) -> None:
    """A token shared by two names, an empty one, a bad name or the reserved name 'admin'
    fails start-up, naming the problem (never the token)."""
    base = settings.model_copy(update={"admin_token": SecretStr("root-t0ken")})
    cases = [
        ({"alice": SecretStr("same"), "bob": SecretStr("same")}, "also another name's token"),
        ({"alice": SecretStr("  ")}, "is empty"),
        ({"al ice": SecretStr("x-t0ken")}, "is not a token name"),
        ({"admin": SecretStr("x-t0ken")}, "'admin' names STALWART_ADMIN_TOKEN"),
        ({"alice": SecretStr("root-t0ken")}, "also another name's token"),
    ]
    for tokens, message in cases:
        with pytest.raises(ConfigError, match=message) as raised:
            BearerAuth.from_settings(base.model_copy(update={"admin_tokens": tokens}))
        assert "t0ken" not in str(raised.value)
    auth = BearerAuth.from_settings(base.model_copy(update={"admin_tokens": {"alice": SecretStr("a-t0ken")}}))
    assert auth.names == ["admin", "alice"]
