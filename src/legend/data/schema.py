"""The vocabulary of preference layouts: what a pair view is, how columns are named, what a layout declares.

A *layout* is one way a preference table stores its pairs (TRL's explicit prompt, hh-rlhf
transcripts, PKU-SafeRLHF, ...). Each is one `PairLayout` record: its name, a one-line description,
the columns it reads, how it is recognised (a predicate over a `LayoutProbe`) and its view maker,
which turns one row into a `PairView`. `legend.data.layouts` keeps the registry; this module holds
only the types, so a layout defined anywhere needs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets

from ..errors import DataError
from .values import describe

Message = dict[str, str]
"""One chat message: ``{"role": "user" | "assistant" | "system", "content": str}``."""

Layout = str
"""A layout's name, a key of `legend.data.LAYOUTS` ("explicit", "conversational", "hh", "pku", "implicit", ...)."""


@dataclass(frozen=True)
class PairView:
    """The texts of one preference pair, independent of the source layout.

    >>> PairView(prompt=({"role": "user", "content": "Hi"},), chosen="Hello", rejected="Go away").chosen
    'Hello'
    """

    prompt: tuple[Message, ...]
    """The conversation before the response (may be empty)."""
    chosen: str
    """The chosen (preferred / safer) assistant response."""
    rejected: str
    """The rejected assistant response."""


@dataclass(frozen=True)
class PairColumns:
    """The prompt / chosen / rejected column names in use (the user's, else the usual ones).

    >>> PairColumns()
    PairColumns(prompt='prompt', chosen='chosen', rejected='rejected')
    """

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"


@dataclass(frozen=True)
class ColumnNames:
    """User overrides of the column names; ``None`` means auto-detect.

    >>> ColumnNames(chosen="answer").resolve()
    PairColumns(prompt='prompt', chosen='answer', rejected='rejected')
    """

    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None

    def resolve(self) -> PairColumns:
        """The names in use: each override, else the usual name.

        Returns:
            A `PairColumns` with every name set.
        """
        return PairColumns(self.prompt or "prompt", self.chosen or "chosen", self.rejected or "rejected")


class LayoutError(DataError):
    """The table fits no registered layout, or a column named by the user is not in it (raised by `detect_layout`)."""


@dataclass(frozen=True)
class Where:
    """A row of a source, for errors and for reading its fields checked.

    >>> where = Where("x.jsonl", 3)
    >>> where.text({"chosen": "Hello"}, "chosen")
    'Hello'
    >>> where.text({"chosen": 7}, "chosen")
    Traceback (most recent call last):
    ...
    legend.errors.DataError: x.jsonl: row 3: field 'chosen': expected a non-empty string, got int
    """

    source: str
    row: int
    """1-based."""

    def error(self, field: str, reason: str) -> DataError:
        """A DataError naming this row and ``field``.

        Args:
            field: the column.
            reason: what is wrong, in a few words.

        Returns:
            The error, to raise.
        """
        return DataError(reason, source=self.source, row=self.row, field=field)

    def text(self, record: dict[str, Any], field: str, *, allow_empty: bool = False) -> str:
        """``record[field]`` checked to be a string (non-empty after stripping unless ``allow_empty``).

        Args:
            record: one row, column -> value.
            field: the column to read.
            allow_empty: accept an empty or blank string.

        Returns:
            The string, unchanged.

        Raises:
            DataError: naming this row and the field.
        """
        value = record[field]
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            adjective = "string" if allow_empty else "non-empty string"
            raise self.error(field, f"expected a {adjective}, got {describe(value)}")
        return value

    def messages(self, value: Any, field: str) -> tuple[Message, ...]:
        """A list of ``{role, content}`` chat messages, checked; extra keys (name, tool_calls, ...) dropped.

        Args:
            value: the field's value.
            field: its column, for the error.

        Returns:
            The messages as a tuple.

        Raises:
            DataError: naming this row, the field and the message number.
        """
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of chat messages, got {describe(value)}")
        messages: list[Message] = []
        for number, message in enumerate(value, start=1):
            if not isinstance(message, dict):
                raise self.error(
                    field, f"message {number}: expected a {{role, content}} object, got {describe(message)}"
                )
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise self.error(
                    field,
                    f"message {number}: expected string 'role' and 'content', got {describe(role)} and "
                    f"{describe(content)}",
                )
            messages.append({"role": role, "content": content})
        return tuple(messages)


def user_prompt(text: str) -> tuple[Message, ...]:
    """A prompt text as one user message (none for a blank text).

    Args:
        text: the prompt.

    Returns:
        ``({"role": "user", "content": text},)``, or ``()`` when ``text`` is blank.

    >>> user_prompt("Hi"), user_prompt("  ")
    (({'role': 'user', 'content': 'Hi'},), ())
    """
    return ({"role": "user", "content": text},) if text.strip() else ()


ColumnKind = Literal["string", "messages", "other"]


def column_kind(ds: datasets.Dataset, column: str) -> ColumnKind:
    """Classify a column from its features, peeking at values only when untyped.

    Args:
        ds: the table.
        column: one of its columns.

    Returns:
        "string", "messages" (lists of ``{role, content}``) or "other".

    >>> column_kind(datasets.Dataset.from_list([{"c": [{"role": "user", "content": "Hi"}]}]), "c")
    'messages'
    """
    feature = ds.features[column]
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return "string"
        if feature.dtype != "null":
            return "other"
    inner = getattr(feature, "feature", None)
    if isinstance(inner, dict):
        return "messages" if {"role", "content"} <= set(inner) else "other"
    # Untyped (e.g. datasets' Json feature for mixed-type columns, or all null): peek.
    for value in ds.select(range(min(ds.num_rows, 100)))[column]:
        if value is None:
            continue
        if isinstance(value, str):
            return "string"
        if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            return "messages"
        return "other"
    return "string"


@dataclass
class LayoutProbe:
    """What a layout's ``detect`` predicate may look at: the table, its columns and the names in use.

    >>> probe = LayoutProbe(datasets.Dataset.from_list([{"question": "q", "answer": "a"}]))
    >>> probe.has("question", "answer"), probe.has("prompt")
    (True, False)
    """

    table: datasets.Dataset
    """The rows read so far (a whole table, or the first chunk of a streamed input)."""
    given: ColumnNames = ColumnNames()
    """The column names the user gave (None: not given)."""
    transcripts: tuple[int, int] | None = None
    """(hh-rlhf transcripts, other texts) in the chosen column counted over a whole streamed input, or None."""
    _kinds: dict[str, ColumnKind] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> PairColumns:
        """The prompt / chosen / rejected names in use."""
        return self.given.resolve()

    @property
    def found(self) -> tuple[str, ...]:
        """The table's column names, in order."""
        return tuple(self.table.column_names)

    def has(self, *columns: str) -> bool:
        """True when every one of ``columns`` is in the table.

        Args:
            columns: column names.

        Returns:
            Whether the table has them all.
        """
        return all(column in self.table.column_names for column in columns)

    def kind(self, column: str) -> ColumnKind:
        """`column_kind` of a column (computed once).

        Args:
            column: one of the table's columns.

        Returns:
            "string", "messages" or "other".
        """
        if column not in self._kinds:
            self._kinds[column] = column_kind(self.table, column)
        return self._kinds[column]


def _no_columns(names: PairColumns) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class PairLayout:
    """One preference layout: register it with `legend.data.register_layout` and every reader knows it.

    Detection tries the registered layouts by ``priority`` (lower first; the built-ins use 10 to 50,
    so 0 goes before them all and the default 100 after), then in registration order; the first
    whose ``detect`` is true wins.

    >>> layout = PairLayout(
    ...     name="qa",
    ...     description="`question`, `good`, `bad` (strings)",
    ...     columns=lambda names: ("question", "good", "bad"),
    ...     detect=lambda probe: probe.has("question", "good", "bad"),
    ...     view=lambda record, names, where: PairView(
    ...         user_prompt(where.text(record, "question")), where.text(record, "good"), where.text(record, "bad")
    ...     ),
    ... )
    >>> layout.expected_columns()
    "'question', 'good', 'bad' (qa)"
    """

    name: str
    """The layout's name (recorded in the annotation's metadata)."""
    description: str
    """One line: what its rows hold (used for help texts and the README table)."""
    columns: Callable[[PairColumns], tuple[str, ...]]
    """The columns every row needs, given the prompt / chosen / rejected names in use."""
    detect: Callable[[LayoutProbe], bool]
    """True when a table is in this layout (asked only if no layout of a lower priority matched)."""
    view: Callable[[dict[str, Any], PairColumns, Where], PairView]
    """One row (column -> value, the needed and present optional columns) -> its PairView; raise `where.error`."""
    optional_columns: Callable[[PairColumns], tuple[str, ...]] = _no_columns
    """Columns read when the table has them."""
    priority: int = 100
    """Detection order, lower first."""
    expected: str | None = None
    """How the "cannot recognise the preference layout" error names it; default: its columns and name."""
    labelled: bool = False
    """True when the layout itself says which answer people preferred (hh-rlhf's chosen, PKU-SafeRLHF's
    `safer_response_id`): `legend annotate` then reports agreement with those labels against the random floor."""

    def expected_columns(self) -> str:
        """The phrase naming this layout's columns in the error for an unrecognised table.

        Returns:
            ``expected`` when given, else the default column names quoted, then the name in brackets.
        """
        if self.expected is not None:
            return self.expected
        return f"{', '.join(repr(c) for c in self.columns(PairColumns()))} ({self.name})"
