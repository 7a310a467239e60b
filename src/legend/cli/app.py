"""The typer application and the error handling every command shares (commands register on `app`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from legend.errors import DataError, DirectionMismatch, ModelError

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
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])

USER_ERRORS = (DataError, DirectionMismatch, ModelError, FileNotFoundError, ValueError)


def user_errors(func: F) -> F:
    """Turn expected failures (bad input, mismatched direction, missing model) into one line and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


PLUGIN_GROUP = "legend.plugins"


def load_plugins() -> list[str]:
    """Import every module of the `legend.plugins` entry-point group (a plugin registers its extensions when
    imported); returns their names. A plugin that fails to import is reported in one line and skipped."""
    from importlib.metadata import entry_points

    loaded = []
    for point in entry_points(group=PLUGIN_GROUP):
        try:
            point.load()
        except Exception as err:  # a broken plugin must not take the whole CLI down
            typer.echo(f"warning: legend plugin {point.name!r} ({point.value}) failed to load: {err}", err=True)
            continue
        loaded.append(point.name)
    return loaded


def spare_inputs(
    inputs: list[Any], *, files: tuple[Any, ...] = (), folders: tuple[Any, ...] = (), tables: tuple[Any, ...] = ()
) -> None:
    """Before anything is read or loaded: refuse an output file or folder that would overwrite, delete or change one
    of the command's inputs (`legend.io.check_outputs_spare_inputs`; None entries and Hub names are skipped), and a
    data output (`tables`, also checked as files) of a type legend cannot write."""
    from legend.io import check_output_type, check_outputs_spare_inputs

    for table in tables:
        if table is not None:
            check_output_type(table)
    check_outputs_spare_inputs([*files, *tables], inputs)
    check_outputs_spare_inputs(list(folders), inputs, folders=True)
