"""Command line: a thin layer over the library functions.

Each command group lives in its own module under ``sscild.cli`` and registers itself on ``app``.
"""
from __future__ import annotations

import typer

app = typer.Typer(
    name="sscild",
    help="Automatic, explainable CT measurements of interstitial lung disease in systemic sclerosis "
         "(research software, not a medical device).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a model: scoring, levels, lesions or outcome.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Compare predictions with truth and print the statistics.",
                           no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")

# Each module registers its commands on app / train_app / evaluate_app when imported.
from . import common  # noqa: E402,F401
from . import phantom_cmd  # noqa: E402,F401
from . import batch_cmd  # noqa: E402,F401
from . import analyze_cmd  # noqa: E402,F401
from . import train_cmd  # noqa: E402,F401
from . import evaluate_cmd  # noqa: E402,F401
from . import outcome_cmd  # noqa: E402,F401
from . import review_cmd  # noqa: E402,F401


def main() -> None:
    """Console entry point: project errors print as one clear line, not a traceback."""
    import warnings

    from ..errors import SscildError
    from .common import console, show_warning

    warnings.showwarning = show_warning         # a warning is one line for the user, not a source location
    try:
        app()
    except SscildError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise SystemExit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
