"""The `legend` command line: a thin typer layer over the Python API (see legend.pipeline)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

app = typer.Typer(
    name="legend",
    help=(
        "Annotate preference datasets with safety margins by representation engineering (Legend).\n\n"
        "Typical flow: `legend induce` (or bring labelled pairs) -> `legend direction` -> `legend annotate`. "
        "`legend demo` runs all three on the bundled samples with the embedded SmolLM2."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn expected failures (bad input, mismatched direction, missing model) into one line and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from legend.data import DataError
        from legend.directions import DirectionMismatch
        from legend.models import ModelError

        try:
            return func(*args, **kwargs)
        except (DataError, DirectionMismatch, ModelError, FileNotFoundError, ValueError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def main() -> None:
    app()


# Command modules register themselves on `app` when imported.
from legend.cli import core  # noqa: E402,F401
from legend.cli import quality  # noqa: E402,F401
from legend.cli import rewards  # noqa: E402,F401
from legend.cli import align  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
