"""Terminal output shared by the commands: one console, one way to fail."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["console", "err_console", "fail", "print_error", "write_output"]

console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """Print ``message`` to stderr as an error (as written: its brackets, such as the
    extra in ``pip install 'stalwart[granian]'``, are not read as markup)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as an error and exit with ``code`` (inside a command)."""
    print_error(message)
    raise typer.Exit(code)


def write_output(path: Path, data: bytes) -> None:
    """Write a command's output file, or fail naming the path and the reason (inside a command)."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}; choose another path with -o")
