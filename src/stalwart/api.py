"""The functions a training script calls: ``stalwart.register_model`` and friends.

They use the registry the ``STALWART_*`` environment points at (SQLite under
``./.stalwart`` by default), so a script needs no setup to register a model that a
server started with the same environment will serve. For another registry, open it:
``Registry.open(settings).register(...)``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from stalwart.config import Settings, load_settings
from stalwart.registry import ModelVersion, Registry

__all__ = ["get_model", "register_model"]

P = ParamSpec("P")
R = TypeVar("R")


def _on_environment_registry(method: Callable[Concatenate[Registry, P], R]) -> Callable[P, R]:
    """``method`` as a function that opens the environment's registry, calls it and closes
    the registry: the parameters, their types and the docstring stay the method's own, so
    they are declared once (mypy checks callers against the method's signature)."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        registry = Registry.open(load_settings())
        try:
            return method(registry, *args, **kwargs)
        finally:
            registry.db.dispose()

    # help() and IDEs show the method's parameters without ``self``.
    signature = inspect.signature(method)
    call.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # type: ignore[attr-defined]  # a documented attribute functions do not declare
    call.__doc__ = (
        "Register ``model`` as the next version of ``name`` in the registry the ``STALWART_*``\n"
        "environment points at, and return that version: :meth:`stalwart.Registry.register`,\n"
        "whose parameters it takes.\n\n"
        '>>> mv = register_model("breast-cancer", clf, sample=X_train, metrics={"auc": 0.99})  # doctest: +SKIP\n\n'
        f"{inspect.cleandoc(method.__doc__ or '')}"
    )
    return call


register_model = _on_environment_registry(Registry.register)


def get_model(name: str, version: int | None = None, *, settings: Settings | None = None) -> ModelVersion:
    """A registered version's record (the latest when ``version`` is None)."""
    registry = Registry.open(settings or load_settings())
    try:
        return registry.get(name, version)
    finally:
        registry.db.dispose()
