"""Alert webhooks: Alertmanager-compatible JSON, POSTed off the event loop, with retries.

The body is what Alertmanager's ``webhook_config`` receivers read (version ``"4"``), so
anything that takes Alertmanager's webhooks (Alertmanager-to-chat bridges, incident tools,
a small script) takes Stalwart's::

    {"version": "4", "groupKey": "{}:{alertname=\\"feature-drift\\"}", "truncatedAlerts": 0,
     "status": "firing", "receiver": "stalwart", "externalURL": "",
     "groupLabels": {"alertname": "feature-drift"}, "commonLabels": {...}, "commonAnnotations": {...},
     "alerts": [{"status": "firing", "labels": {"alertname": ..., "deployment": ..., "column": ...,
                 "severity": ..., "metric": ...}, "annotations": {"summary": ..., "value": ...,
                 "threshold": ...}, "startsAt": "2024-05-01T12:00:00Z",
                 "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "..."}]}

One POST per rule per evaluation that has something to say, to every configured URL.
Which alerts are said, and when (deduplication, the cooldown between reminders, resolved
once), the engine decides and records in the database; this module only delivers.

Delivery: a bounded queue and one worker thread per notifier (``urllib.request``, the
standard library: a POST now and then needs no connection pool, and ``httpx`` is only a
development dependency). Each POST has a time limit; connection errors, time-outs, 429 and
5xx are retried with exponential backoff and jitter, up to ``attempts`` tries; other 4xx
are not (the receiver refused the body, and will again). Delivery is at most once: a
process killed with posts queued loses them, and the state in the database still says
they were sent, so no other replica sends them twice.

URLs are secrets (Slack-style URLs carry a token in the path, others credentials in the
user part or the query): logs and errors name a URL by its position and host only.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from stalwart.errors import ConfigError
from stalwart.monitoring.alert_metrics import AlertMetrics
from stalwart.monitoring.alerts import Notification
from stalwart.monitoring.logs import get_logger

__all__ = ["MAX_ALERTS_PER_POST", "WebhookNotifier", "alertmanager_payload", "describe_url"]

MAX_ALERTS_PER_POST = 1_000
"""Alerts in one POST; more are counted in ``truncatedAlerts`` (as Alertmanager's
``max_alerts`` does), so a payload's size is bounded."""

_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end yet"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_log = get_logger("stalwart.alerts")


def describe_url(url: str, index: int | None = None) -> str:
    """A webhook URL as logs may show it: its position and scheme://host[:port], nothing of
    the user, path or query, where credentials live."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port is not None else ""
        shown = f"{parts.scheme}://{host}{port}/…"
    except ValueError:
        shown = "an unparsable URL"
    return shown if index is None else f"webhook {index + 1} ({shown})"


def alertmanager_payload(notifications: Sequence[Notification], *, receiver: str = "stalwart", external_url: str = "") -> dict[str, Any]:
    """The Alertmanager webhook body (version 4) for the notifications of one rule."""
    if not notifications:
        raise ValueError("a webhook payload needs at least one alert")
    shown = list(notifications[:MAX_ALERTS_PER_POST])
    alertname = shown[0].alert
    alerts = [
        {
            "status": n.status,
            "labels": dict(n.labels),
            "annotations": dict(n.annotations),
            "startsAt": _rfc3339(n.starts_at),
            "endsAt": _rfc3339(n.ends_at) if n.ends_at is not None else _ZERO_TIME,
            "generatorURL": "",
            "fingerprint": n.fingerprint,
        }
        for n in shown
    ]
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "truncatedAlerts": len(notifications) - len(shown),
        "status": "firing" if any(n.status == "firing" for n in notifications) else "resolved",
        "receiver": receiver,
        "groupLabels": {"alertname": alertname},
        "commonLabels": _common([n.labels for n in shown]),
        "commonAnnotations": _common([n.annotations for n in shown]),
        "externalURL": external_url,
        "alerts": alerts,
    }


class WebhookNotifier:
    """Posts the engine's notifications to every URL in ``urls``, from a thread of its own.

    :meth:`notify` only enqueues (the engine calls it after its transaction); start with
    :meth:`start`, stop with :meth:`close`, which gives queued posts until its deadline."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 5.0,
        attempts: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        queue_size: int = 1_000,
        metrics: AlertMetrics | None = None,
        receiver: str = "stalwart",
        external_url: str = "",
    ) -> None:
        for i, url in enumerate(urls):
            scheme = urlsplit(url).scheme if isinstance(url, str) else ""
            if scheme not in ("http", "https"):
                raise ConfigError(f"STALWART_ALERT_WEBHOOKS: entry {i + 1} is not an http(s) URL; write http://host/path or https://host/path")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigError(f"webhook timeout {timeout!r} must be a positive number of seconds")
        self.urls = tuple(urls)
        self._targets = tuple(_target(url) for url in urls)
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.metrics = metrics
        self.receiver = receiver
        self.external_url = external_url
        self._queue: queue.Queue[tuple[int, bytes]] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._deadline = math.inf
        self._thread: threading.Thread | None = None

    def notify(self, notifications: Sequence[Notification]) -> None:
        """Queue one POST per rule (to every URL) for these notifications; never blocks."""
        by_alert: dict[str, list[Notification]] = {}
        for n in notifications:
            by_alert.setdefault(n.alert, []).append(n)
        for group in by_alert.values():
            body = json.dumps(alertmanager_payload(group, receiver=self.receiver, external_url=self.external_url)).encode()
            for index in range(len(self.urls)):
                try:
                    self._queue.put_nowait((index, body))
                except queue.Full:
                    self._count("dropped")
                    _log.warning("alert webhook queue full; notification dropped", webhook=describe_url(self.urls[index], index))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stalwart-alert-webhooks", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for at most ``timeout`` seconds, then stop."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + self.timeout)
            self._thread = None

    def pending(self) -> int:
        """Posts queued and not yet taken by the worker."""
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            if self._stop.is_set() and (self._queue.empty() or time.monotonic() >= self._deadline):
                return
            try:
                index, body = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self._deliver(index, body)

    def _deliver(self, index: int, body: bytes) -> None:
        url = self.urls[index]
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            problem, retry = self._post(index, body)
            if problem is None:
                self._count("sent")
                return
            if not retry or attempt == self.attempts:
                self._count("failed")
                _log.warning("alert webhook failed", webhook=describe_url(url, index), problem=problem, attempts=attempt)
                return
            wait = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not a secret
            if self._stop.is_set() and time.monotonic() + wait > self._deadline:
                self._count("failed")
                _log.warning("alert webhook not retried: shutting down", webhook=describe_url(url, index), problem=problem)
                return
            if self._stop.is_set():
                time.sleep(wait)  # closing: the event no longer waits, the deadline allows this
            else:
                self._stop.wait(wait)  # a close() during the wait moves on to the deadline check
            delay = min(delay * 2, self.max_backoff)

    def _post(self, index: int, body: bytes) -> tuple[str | None, bool]:
        """``(None, _)`` when delivered, else ``(what went wrong, whether to retry)``."""
        url, authorization = self._targets[index]
        headers = {"Content-Type": "application/json", "User-Agent": "stalwart-alerts"}
        if authorization is not None:
            headers["Authorization"] = authorization
        try:
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310 - http(s) only, checked at construction
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only, see above
                response.read(65_536)  # a bounded read, so the connection closes cleanly
                return None, False
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}", exc.code in _RETRY_STATUS
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            # The reason of a URLError can quote the URL; name only its class.
            reason = getattr(exc, "reason", exc)
            return type(reason).__name__, True
        except OSError as exc:
            return type(exc).__name__, True
        except ValueError as exc:  # http.client.InvalidURL: a port that is not a number...
            return type(exc).__name__, False

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(outcome).inc()


def _target(url: str) -> tuple[str, str | None]:
    """The URL to post to and its ``Authorization`` header: credentials in the URL's user
    part (``https://user:pass@host/...``) are sent as HTTP Basic, as Alertmanager's
    ``basic_auth`` does, since urllib would take them for part of the host."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    host = parts.netloc.rsplit("@", 1)[1]
    token = base64.b64encode(credentials.encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _common(items: Sequence[Mapping[str, str]]) -> dict[str, str]:
    first = dict(items[0])
    return {k: v for k, v in first.items() if all(other.get(k) == v for other in items[1:])}
