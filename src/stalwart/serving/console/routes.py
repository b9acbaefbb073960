"""The console's routes under ``/ui``: pages, live fragments, login, actions, assets.

Who may see what follows the admin API. What the API answers without a token (deployments,
routes, rollouts, health, ``/metrics``) a page shows to anyone; pages with request data
(the monitoring report's distributions, the prediction log) need a login, as the API needs a
token for them; with ``STALWART_UI_REQUIRE_TOKEN=true`` every page does. A page that needs a
login sends the browser to the login form and back. Errors are pages too: the status the API
would answer, the message escaped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from stalwart._version import __version__
from stalwart.errors import StalwartError, StorageError
from stalwart.monitoring import report_markup
from stalwart.rollout import report_html as rollout_report
from stalwart.serving.console import actions, records, reports, views
from stalwart.serving.console.actions import DONE, Action, local_path, read_form, same_origin
from stalwart.serving.console.session import Session
from stalwart.serving.console.state import Console
from stalwart.serving.errors import status_for
from stalwart.serving.middleware import request_info

__all__ = ["console_routes"]

Page = Callable[[Request, Session | None], Awaitable[Response]]

_REPORT_CSS = (report_markup.CSS + rollout_report.CSS).encode()


def console_routes(console: Console) -> list[BaseRoute]:
    """Every ``/ui`` route over ``console``."""
    pages = console.pages

    def render(request: Request, session: Session | None, template: str, *, status: int = 200, **context: Any) -> Response:
        done = request.query_params.get("done", "")
        return pages.render(
            template, status=status, session=session, done=DONE.get(done), path=request.url.path,
            version=__version__, require_token=console.settings.ui_require_token, **context,
        )

    def page(endpoint: str, build: Callable[[Request], Awaitable[dict[str, Any]]], template: str, *, login: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            request_info(request.scope).endpoint = endpoint
            session = console.sessions.session(request)
            if session is None and (login or console.settings.ui_require_token):
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)
            try:
                context = await build(request)
            except StalwartError as exc:
                return error(request, session, exc)
            return render(request, session, template, **context)

        return run

    def error(request: Request, session: Session | None, exc: StalwartError, status: int | None = None) -> Response:
        # A database's message names its host and user: the log has it, a page does not.
        message = "the registry database is unavailable; retry shortly" if isinstance(exc, StorageError) else exc.message
        return render(request, session, "error.html", status=status or status_for(exc), message=message)

    def action(endpoint: str, act: Action) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            request_info(request.scope).endpoint = endpoint
            session = console.sessions.session(request)
            if session is None:
                return render(request, None, "error.html", status=401,
                              message="this action needs a login with an admin token: log in, then try again")
            try:
                form = await read_form(request)
                if not same_origin(request) or not console.sessions.csrf_ok(session, form.get("csrf", "")):
                    return render(request, session, "error.html", status=403,
                                  message="the form's CSRF token is missing or not this session's (or it came from "
                                          "another site's page): reload the console's page and try again")
                return await act(request, session, form)
            except StalwartError as exc:
                return error(request, session, exc)

        return run

    # -- pages --------------------------------------------------------------------------

    async def overview(_request: Request) -> dict[str, Any]:
        return await views.overview_view(console)

    async def live(_request: Request) -> dict[str, Any]:
        return {"live": views.live_view(console)}

    async def deployment(request: Request) -> dict[str, Any]:
        return await views.deployment_view(console, request.path_params["name"])

    async def deployment_live(request: Request) -> dict[str, Any]:
        return {"name": request.path_params["name"], **views.deployment_live_view(console, request.path_params["name"])}

    async def monitoring(request: Request) -> dict[str, Any]:
        return await reports.monitoring_view(console, request.path_params["name"], request.query_params)

    async def rollout(request: Request) -> dict[str, Any]:
        return await reports.rollout_view(console, request.path_params["name"], request.query_params)

    async def shadows(request: Request) -> dict[str, Any]:
        return await reports.shadows_view(console, request.path_params["name"], request.query_params)

    async def predictions(request: Request) -> dict[str, Any]:
        return await records.predictions_view(console, request.path_params["name"], request.query_params)

    async def prediction(request: Request) -> dict[str, Any]:
        return await records.prediction_view(console, request.path_params["request_id"])

    async def model(request: Request) -> dict[str, Any]:
        return await views.model_view(console, request.path_params["name"])

    # -- logging in and out -------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        request_info(request.scope).endpoint = "/ui/login"
        session = console.sessions.session(request)
        return login_page(request, session, 200, None, local_path(request.query_params.get("next"), "/ui"))

    def login_page(request: Request, session: Session | None, status: int, problem: str | None, next_page: str) -> Response:
        nonce = console.sessions.login_nonce()
        response = render(request, session, "login.html", status=status, problem=problem, next=next_page, nonce=nonce)
        console.sessions.send_login_nonce(response, nonce)
        return response

    async def log_in(request: Request) -> Response:
        request_info(request.scope).endpoint = "/ui/login"
        try:
            form = await read_form(request)
        except StalwartError as exc:
            return error(request, None, exc)
        target = local_path(form.get("next"), "/ui")
        if not same_origin(request) or not console.sessions.login_nonce_ok(request, form.get("nonce", "")):
            return login_page(request, None, 403, "The login form expired or came from another page: try again.", target)
        response = RedirectResponse(target + ("&" if "?" in target else "?") + "done=login", status_code=303)
        if console.sessions.log_in(form.get("token", ""), response) is None:
            return login_page(request, None, 401, "That is not an admin token of this server.", target)
        return response

    async def log_out(request: Request) -> Response:
        response = RedirectResponse("/ui?done=logout", status_code=303)
        console.sessions.log_out(response)
        return response

    async def logout(request: Request, session: Session, form: actions.Form) -> Response:
        del session, form
        return await log_out(request)

    async def report_css(request: Request) -> Response:
        request_info(request.scope).endpoint = "/ui/report.css"
        return Response(_REPORT_CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    return [
        Route("/ui", page("/ui", overview, "overview.html"), methods=["GET"]),
        Route("/ui/live", page("/ui/live", live, "_live.html"), methods=["GET"]),
        Route("/ui/login", login_form, methods=["GET"]),
        Route("/ui/login", log_in, methods=["POST"]),
        Route("/ui/logout", action("/ui/logout", logout), methods=["POST"]),
        Route("/ui/deployments/{name}", page("/ui/deployments/{name}", deployment, "deployment.html"), methods=["GET"]),
        Route("/ui/deployments/{name}/live", page("/ui/deployments/{name}/live", deployment_live, "_deployment_live.html"), methods=["GET"]),
        Route("/ui/deployments/{name}/monitoring", page("/ui/deployments/{name}/monitoring", monitoring, "monitoring.html", login=True), methods=["GET"]),
        Route("/ui/deployments/{name}/rollout", page("/ui/deployments/{name}/rollout", rollout, "rollout.html"), methods=["GET"]),
        Route("/ui/deployments/{name}/shadows", page("/ui/deployments/{name}/shadows", shadows, "shadows.html"), methods=["GET"]),
        Route("/ui/deployments/{name}/predictions", page("/ui/deployments/{name}/predictions", predictions, "predictions.html", login=True), methods=["GET"]),
        Route("/ui/deployments/{name}/rollout/{action}", action("/ui/deployments/{name}/rollout/{action}", actions.rollout_action(console)), methods=["POST"]),
        Route("/ui/predictions/{request_id:path}", page("/ui/predictions/{request_id}", prediction, "record.html", login=True), methods=["GET"]),
        Route("/ui/models/{name}", page("/ui/models/{name}", model, "model.html"), methods=["GET"]),
        Route("/ui/models/{name}/{version}/schemas/{revision}/activate",
              action("/ui/models/{name}/{version}/schemas/{revision}/activate", actions.activate_schema(console)), methods=["POST"]),
        Route("/ui/features/{name}/invalidate", action("/ui/features/{name}/invalidate", actions.invalidate(console)), methods=["POST"]),
        Route("/ui/report.css", report_css, methods=["GET"]),
        Mount("/ui/static", app=StaticFiles(packages=[("stalwart.serving.console", "static")]), name="console-static"),
    ]
