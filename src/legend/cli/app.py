"""The typer application and the error handling every command shares (commands register on `app`)."""

from __future__ import annotations

import functools
import logging
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

USER_ERRORS = (DataError, DirectionMismatch, ModelError, ValueError, OSError)
"""What a command reports in one line (exit 2): bad input, a mismatched direction, a model that does not load, and
every OS error (a read-only folder, a full disk, a path under a file, a missing permission), named by its path."""


def error_line(err: BaseException) -> str:
    """The one line a failure is reported in: an OS error as its path and the errno's words, else the first line."""
    if isinstance(err, OSError):
        from legend.io import os_error_message

        return os_error_message(err)
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class WarningLines(logging.Handler):
    """Print each warning legend logs as one `warning: ...` line on stderr while a command runs."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().strip().splitlines()[0]
        except Exception:  # a broken log call must not end the command
            return
        typer.echo(message if message.startswith("warning: ") else f"warning: {message}", err=True)


def user_errors(func: F) -> F:
    """Turn expected failures (bad input, mismatched direction, missing model, OS errors) into one line and exit 2,
    and show the warnings legend logs (truncated answers, an unchecked tokenizer, ...) as `warning:` lines."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from legend.io import unwind_on_termination

        logger = logging.getLogger("legend")
        handler = WarningLines(logging.WARNING)
        logger.addHandler(handler)
        try:
            with unwind_on_termination():  # SIGTERM/SIGHUP: temporaries and locks are removed as on Ctrl-C
                return func(*args, **kwargs)
        except USER_ERRORS as err:
            typer.echo(f"error: {error_line(err)}", err=True)
            raise typer.Exit(code=2) from None
        finally:
            logger.removeHandler(handler)

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
    of the command's inputs (`legend.io.check_outputs_spare_inputs`; None entries and Hub names are skipped), a
    data output (`tables`, also checked as files) of a type legend cannot write, and an output that cannot be
    created where it is asked for (`legend.io.check_writable`: under a file, a read-only or full folder)."""
    from legend.io import check_output_type, check_outputs_spare_inputs, check_writable

    for table in tables:
        if table is not None:
            check_output_type(table)
    check_outputs_spare_inputs([*files, *tables], inputs)
    check_outputs_spare_inputs(list(folders), inputs, folders=True)
    check_writable([*files, *tables, *folders])  # a read-only or full folder fails now, not after the work
