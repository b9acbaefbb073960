"""``stalwart rollout ...``: canary rollouts and a deployment's variants, from the terminal.

::

    stalwart rollout start fraud --canary fraud:3 --steps 5,25,50 --min-seconds 5m
    stalwart rollout status fraud
    stalwart rollout pause|resume|promote|rollback fraud --reason "..."
    stalwart rollout report fraud -o rollout.html
    stalwart rollout routes fraud --shadow next=fraud:4@0.5

Every command works on the database the ``STALWART_*`` settings name, as the servers do:
they serve a change within a poll, and the controller (in one of them) moves a started
rollout by itself. The actor in the audit log is ``user@host``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from stalwart.cli.output import console, err_console, write_output

__all__ = ["rollout_app"]

rollout_app = typer.Typer(help="Canary rollouts (start, watch, stop) and a deployment's variants.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="the deployment")]
ProjectOpt = Annotated[Path | None, typer.Option(help="project file [env STALWART_PROJECT]")]
Reason = Annotated[str, typer.Option(help="why, for the audit log")]


@rollout_app.command("start")
def start(
    name: Name,
    canary: Annotated[str, typer.Option(help="the model version to roll out, 'model:version'")],
    steps: Annotated[str | None, typer.Option(help="the canary's weights in percent, e.g. 5,25,50 (default: the deployment's plan)")] = None,
    min_seconds: Annotated[str | None, typer.Option(help="each step's minimum duration, e.g. 5m")] = None,
    min_requests: Annotated[int | None, typer.Option(min=0, help="canary requests each step needs")] = None,
    look: Annotated[str | None, typer.Option(help="how often the controller looks, e.g. 10s")] = None,
    reason: Reason = "",
    project: ProjectOpt = None,
) -> None:
    """Start rolling a model version out as the deployment's canary."""
    from stalwart.errors import ConfigError
    from stalwart.rollout.commands import start_rollout

    plan: dict[str, Any] = {}
    if steps is not None:
        try:
            plan["steps"] = [float(s) / 100 for s in steps.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--steps: {steps!r} is not a list of percentages such as 5,25,50") from None
    for key, value in (("min_seconds", min_seconds), ("min_requests", min_requests), ("look_seconds", look)):
        if value is not None:
            plan[key] = value
    from stalwart.config import load_settings

    store, registry, loaded, actor = _parts(project)
    log = load_settings().prediction_log
    rollout = start_rollout(store, registry, loaded, name, canary, plan=plan, actor=actor, reason=reason, prediction_log=log)
    weights = ", ".join(f"{s.weight:.0%}" for s in rollout.plan.steps)
    console.print(
        f"rollout [bold]{rollout.id}[/]: {rollout.primary} → [bold]{rollout.canary}[/] on '{name}', "
        f"steps {weights}, then promotion; now at {rollout.weight:.0%}",
        highlight=False,
    )


@rollout_app.command("status")
def status(
    name: Name,
    events: Annotated[int, typer.Option(min=0, max=1000, help="how many of the newest events to show")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="the rollout and its events as JSON")] = False,
) -> None:
    """Where the deployment's rollout stands: its step, weight, last verdicts and decisions."""
    store = _store()
    rollout = store.latest(name)
    if rollout is None:
        err_console.print(f"deployment '{name}' has had no rollout; start one with 'stalwart rollout start {name} --canary model:version'")
        raise typer.Exit(1)
    found = store.events(rollout.id, limit=max(events, 1))
    if as_json:
        sys.stdout.buffer.write(msgspec.json.encode({"rollout": rollout.to_dict(), "events": found[-events:] if events else []}) + b"\n")
        return
    from stalwart.rollout.history import RolloutHistory
    from stalwart.rollout.report_text import status_table

    console.print(status_table(RolloutHistory.from_rows(rollout.to_dict(), found)))


def _action(action: str) -> None:
    def command(name: Name, reason: Reason = "") -> None:
        store = _store()
        from stalwart.registry.audit import process_actor

        rollout = getattr(store, action)(name, actor=process_actor(), reason=reason)
        console.print(f"rollout {rollout.id} of {rollout.canary} on '{name}' is now [bold]{rollout.state}[/]", highlight=False)

    command.__doc__ = {
        "pause": "Stop the controller moving the rollout; the canary keeps its weight.",
        "resume": "Hand a paused or held rollout back to the controller (its step starts a new window).",
        "promote": "Make the canary the primary now.",
        "rollback": "Take every request off the canary now.",
    }[action]
    rollout_app.command(action)(command)


for _name in ("pause", "resume", "promote", "rollback"):
    _action(_name)


@rollout_app.command("report")
def report(
    name: Name,
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the HTML page")] = Path("rollout.html"),
    events: Annotated[int, typer.Option(min=1, max=100_000, help="the newest events to include")] = 10_000,
) -> None:
    """Write the rollout's page: weights and verdicts over time, as plots, and every decision."""
    from stalwart.rollout.history import RolloutHistory
    from stalwart.rollout.report_html import render

    store = _store()
    rollout = store.latest(name)
    if rollout is None:
        err_console.print(f"deployment '{name}' has had no rollout")
        raise typer.Exit(1)
    page = render(RolloutHistory.from_rows(rollout.to_dict(), store.events(rollout.id, limit=events))).encode()
    write_output(output, page)
    console.print(f"wrote [bold]{output}[/] ({len(page) / 1024:.0f} KiB): rollout {rollout.id}, {rollout.state}", highlight=False)


@rollout_app.command("routes")
def routes(
    name: Name,
    canary: Annotated[str | None, typer.Option(help="set the canary, 'model:version'")] = None,
    weight: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="set the canary's weight, 0 to 1")] = None,
    remove_canary: Annotated[bool, typer.Option("--remove-canary", help="take the canary away")] = False,
    shadow: Annotated[list[str] | None, typer.Option(help="NAME=MODEL:VERSION[@RATE], repeatable; replaces the shadows")] = None,
    clear_shadows: Annotated[bool, typer.Option("--clear-shadows", help="remove every shadow")] = False,
    project: ProjectOpt = None,
) -> None:
    """Show the deployment's variants, or change them by hand (outside a rollout)."""
    from stalwart.rollout.commands import set_routes

    shadows = _shadows(shadow or []) if shadow or clear_shadows else None
    if canary is None and weight is None and not remove_canary and shadows is None:
        found, revision = _store().routes.get(name)
    else:
        store, registry, loaded, actor = _parts(project)
        found, revision = set_routes(
            store, registry, loaded, name, canary=canary, canary_weight=weight, shadows=shadows,
            remove_canary=remove_canary, actor=actor,
        )
    console.print_json(data={"deployment": name, "revision": revision, "routes": found.to_dict()})


def _shadows(specs: list[str]) -> dict[str, dict[str, Any]]:
    from stalwart.errors import ConfigError

    shadows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        model, at, rate = rest.partition("@")
        if not sep or not name or not model:
            raise ConfigError(f"--shadow: {spec!r} is not NAME=MODEL:VERSION[@RATE]")
        try:
            shadows[name] = {"model": model, "rate": float(rate) if at else 1.0}
        except ValueError:
            raise ConfigError(f"--shadow: the rate in {spec!r} is not a number from 0 to 1") from None
    return shadows


def _store() -> Any:
    """The rollout store of the settings' database, with the project's deployments in it
    when a project file is named (as a server would have put them)."""
    from stalwart.config import load_settings
    from stalwart.project import load_project
    from stalwart.registry import Registry
    from stalwart.registry.audit import process_actor
    from stalwart.rollout.rollouts import RolloutStore

    settings = load_settings()
    store = RolloutStore(Registry.open(settings).db)
    if settings.project is not None:
        store.routes.sync_declared(load_project(settings.project).deployments, process_actor(), reset=False)
    return store


def _parts(project: Path | None) -> tuple[Any, Any, Any, str]:
    from stalwart.cli.output import fail
    from stalwart.config import load_settings
    from stalwart.project import load_project
    from stalwart.registry import Registry
    from stalwart.registry.audit import process_actor
    from stalwart.rollout.rollouts import RolloutStore

    settings = load_settings(**({"project": project} if project else {}))
    if settings.project is None:
        fail("name the project file with --project or STALWART_PROJECT")
    registry = Registry.open(settings)
    project_ = load_project(settings.project)
    store = RolloutStore(registry.db)
    actor = process_actor()
    store.routes.sync_declared(project_.deployments, actor, reset=False)  # before any server ran here
    return store, registry, project_, actor
