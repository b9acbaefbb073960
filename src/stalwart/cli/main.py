"""``stalwart``: serve models, manage the registry, run the demo.

Every command reads the same ``STALWART_*`` settings as the server, so ``stalwart models
list`` shows exactly what ``stalwart serve`` serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stalwart.cli.audit import audit_app
from stalwart.cli.features import features_app
from stalwart.cli.log import log_app
from stalwart.cli.models import models_app
from stalwart.cli.monitor import monitor_app
from stalwart.cli.output import print_error
from stalwart.cli.rollout import rollout_app
from stalwart.cli.schemas import schema_app
from stalwart.cli.score import score_command
from stalwart.cli.shadow import shadow_app
from stalwart.cli.validate import validate_command

app = typer.Typer(
    name="stalwart",
    help="Run machine-learning models in production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models_app, name="models")
app.add_typer(features_app, name="features")
app.add_typer(schema_app, name="schema")
app.add_typer(log_app, name="log")
app.add_typer(audit_app, name="audit")
app.add_typer(monitor_app, name="monitor")
app.add_typer(rollout_app, name="rollout")
app.add_typer(shadow_app, name="shadow")
app.command("validate")(validate_command)
app.command("score")(score_command)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="interface to bind [env STALWART_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port to bind [env STALWART_PORT]")] = None,
    project: Annotated[Path | None, typer.Option(help="project file with feature definitions")] = None,
    workers: Annotated[
        int | None, typer.Option(help="server processes sharing the port, under one supervisor [env STALWART_WORKERS]")
    ] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(help="also serve the OIP gRPC service on this port (the grpc extra) [env STALWART_GRPC_PORT]"),
    ] = None,
) -> None:
    """Serve every registered model over the Open Inference Protocol (REST, and gRPC with --grpc-port)."""
    from stalwart.config import load_settings
    from stalwart.monitoring.logs import configure_logging, get_logger

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if project is not None:
        overrides["project"] = project
    if grpc_port is not None:
        overrides["grpc_port"] = grpc_port
    if workers is not None:
        overrides["workers"] = workers
    settings = load_settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers > 1:
        # A supervisor of worker processes, each one server like the one below (serving/workers.py).
        from stalwart.serving.workers import run_workers

        raise typer.Exit(run_workers(settings))

    from stalwart.serving.app import create_app
    from stalwart.serving.server import build_server

    app_ = create_app(settings)
    # Built before the log line: a server that is not installed is an error naming its extra.
    server = build_server(app_, settings, drain=app_.state.drain)
    get_logger("stalwart.cli").info(
        "serving",
        url=f"http://{settings.host}:{settings.port}",
        grpc=f"{settings.host}:{settings.grpc_port}" if settings.grpc_port is not None else None,
        console=f"http://{settings.host}:{settings.port}/ui" if settings.ui else None,
        server=settings.server,
        registry=app_.state.registry.db.describe(),
        admin_token_file=str(settings.admin_token_file()) if settings.admin_token is None else None,
    )
    # Timeouts, keep-alive, the connection limit and SIGTERM's drain from STALWART_*
    # (serving/server.py, serving/drain.py).
    server.run()
    if not server.started:  # the port was taken, or the lifespan failed
        raise typer.Exit(3)


@app.command()
def demo(
    once: Annotated[bool, typer.Option("--once", help="run the tour and exit (for tests)")] = False,
    port: Annotated[int, typer.Option(help="port for the demo server (0: any free port)")] = 8080,
    home: Annotated[Path, typer.Option(help="the demo's own registry, reset on each run")] = Path(".stalwart-demo"),
) -> None:
    """Train two models on real data, register them, serve them and call them."""
    from stalwart.cli.demo import run_demo

    code = run_demo(once=once, port=port, home=home)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    from stalwart.errors import StalwartError

    try:
        app()
    except StalwartError as exc:
        # Outside the command, so typer.Exit (what fail raises) would reach the user as a
        # traceback: print the message and exit directly.
        print_error(exc.message)
        raise SystemExit(1) from None


__all__ = ["app", "main"]
