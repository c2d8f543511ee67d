"""Shared bits of the command line: the console, the version option."""
from __future__ import annotations

import typer
from rich.console import Console

from .. import __version__

console = Console(stderr=True, soft_wrap=True)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the command line: ``warning: <message>`` on the console, without the file and
    line of the code that warned (the Python default), which say nothing to a user."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/] {escape(str(message))}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sscild {__version__}")
        raise typer.Exit()


def _register() -> None:
    from . import app

    @app.callback()
    def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit.")) -> None:
        """sscild command line."""


_register()
