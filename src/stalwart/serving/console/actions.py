"""What the console lets a logged-in admin do, each through the very command the admin API
and the CLI call: pause, resume, promote or roll back a rollout (``RolloutStore``), drop a
feature set's cached values (:func:`~stalwart.serving.v1.invalidate_feature_set`), make a
schema revision the active one (``SchemaStore.activate``). Each is in the audit log under
the name of the token the admin logged in with.

Every action is a form POST that carries the session's CSRF token; one without a session is
refused (401), one whose token is missing or wrong (403), and one from a page of another
origin (403, by its ``Origin`` header) before anything changes. After it, the browser is sent
back (303) to the page it came from, which says what was done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from stalwart.errors import NotFound, RequestError
from stalwart.rollout.commands import ACTIONS
from stalwart.serving.codec import shown
from stalwart.serving.console.session import Session
from stalwart.serving.console.state import Console
from stalwart.serving.v1 import invalidate_feature_set

__all__ = ["DONE", "Form", "activate_schema", "local_path", "read_form", "rollout_action", "same_origin"]

Form = dict[str, str]
Action = Callable[[Request, Session, Form], Awaitable[Response]]

DONE: Final = {
    "pause": "The rollout is paused: the canary keeps its weight, the controller stops moving it.",
    "resume": "The rollout is running again: the controller judges the canary at its next look.",
    "promote": "The canary is promoted: it is the primary now, on every replica within a poll.",
    "rollback": "The rollout is rolled back: the canary gets no more traffic, on every replica within a poll.",
    "invalidate": "The feature set's cached values are dropped in every replica: the next requests read the source.",
    "activate": "The schema revision is active: servers validate with it after their next registry poll.",
    "login": "Logged in.",
    "logout": "Logged out.",
}
"""What a page says after an action (``?done=<key>``): fixed texts, nothing from the URL."""

_MAX_FORM: Final = 16 * 1024
_MAX_REASON: Final = 500


async def read_form(request: Request) -> Form:
    """A URL-encoded form's fields (the first value of each); a 400 for anything else."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise RequestError("send the console's form (application/x-www-form-urlencoded)", field="content-type")
    body = await request.body()
    if len(body) > _MAX_FORM:
        raise RequestError(f"the form is over {_MAX_FORM // 1024} KiB", field="body")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the form is not URL-encoded UTF-8 with at most 32 fields", field="body") from None
    return {name: values[0] for name, values in fields.items()}


def same_origin(request: Request) -> bool:
    """False when the request says it came from a page of another origin (``Origin``);
    browsers send it with every form POST, so its absence means a client that is not one."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    parts = urlsplit(origin)
    return parts.netloc == host and parts.scheme in ("http", "https")


def local_path(path: str | None, default: str) -> str:
    """``path`` when it is a page of the console (``/ui`` or below it, no host, no
    scheme), else ``default``: where to send the browser back, never off this server."""
    if not path or "\\" in path or any(ord(c) < 0x20 for c in path):
        return default
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not (parts.path == "/ui" or parts.path.startswith("/ui/")) or path.startswith("//"):
        return default
    return path


def _back(form: Form, default: str, done: str) -> RedirectResponse:
    target = local_path(form.get("back"), default)
    separator = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{separator}done={done}", status_code=303)


def _reason(form: Form) -> str:
    reason = form.get("reason", "").strip()
    if len(reason) > _MAX_REASON:
        raise RequestError(f"reason: at most {_MAX_REASON} characters", field="reason")
    return reason


def rollout_action(console: Console) -> Action:
    """``POST /ui/deployments/{name}/rollout/{action}``: pause, resume, promote, rollback."""

    async def act(request: Request, session: Session, form: Form) -> Response:
        name: str = request.path_params["name"]
        action: str = request.path_params["action"]
        console.project.deployment(name)  # DeploymentNotFound (404)
        if action not in ACTIONS:
            raise NotFound(f"no rollout action '{shown(action)}'; use one of {', '.join(ACTIONS)}")
        reason = _reason(form) or "from the console"
        move = getattr(console.rollouts, action)
        await asyncio.to_thread(lambda: move(name, actor=session.actor, reason=reason))
        return _back(form, f"/ui/deployments/{quote(name)}/rollout", action)

    return act


def invalidate(console: Console) -> Action:
    """``POST /ui/features/{name}/invalidate``: every cached value of the feature set."""

    async def act(request: Request, session: Session, form: Form) -> Response:
        name: str = request.path_params["name"]
        await invalidate_feature_set(console.project, console.cache, console.registry, name, None, actor=session.actor)
        return _back(form, "/ui", "invalidate")

    return act


def activate_schema(console: Console) -> Action:
    """``POST /ui/models/{name}/{version}/schemas/{revision}/activate``."""

    async def act(request: Request, session: Session, form: Form) -> Response:
        name: str = request.path_params["name"]
        version, revision = _number(request, "version"), _number(request, "revision")
        await asyncio.to_thread(lambda: console.registry.schemas.activate(name, version, revision, actor=session.actor))
        return _back(form, f"/ui/models/{quote(name)}", "activate")

    return act


def _number(request: Request, field: str) -> int:
    text: str = request.path_params[field]
    if not text.isdigit() or len(text) > 9:
        raise RequestError(f"{field}: a whole number", field=field)
    return int(text)
