"""The layout registry: recognising a table's layout and turning its rows into pair views.

Adding a layout is one `PairLayout` record and one `register_layout` call, from inside the package
or outside it; `detect_layout`, `pair_views`, the streamed readers and every command then know it.

>>> [layout.name for layout in LAYOUTS.values()]
['conversational', 'explicit', 'hh', 'implicit', 'pku']
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

from ..errors import DataError
from .builtin_layouts import BUILTIN_LAYOUTS
from .schema import ColumnNames, Layout, LayoutError, LayoutProbe, PairLayout, PairView, Where
from .values import BATCH_ROWS

LAYOUTS: dict[str, PairLayout] = {layout.name: layout for layout in BUILTIN_LAYOUTS}
"""Every known layout by name, in registration order (detection goes by `PairLayout.priority` first)."""

_BUILTIN_NAMES = frozenset(LAYOUTS)
_COLUMN_FLAGS = "--prompt-column/--chosen-column/--rejected-column"


def register_layout(layout: PairLayout, *, replace: bool = False) -> PairLayout:
    """Make a layout known to every reader (`detect_layout`, `pair_views`, `read_pairs`, the CLI).

    Args:
        layout: the record.
        replace: allow replacing a registered layout of the same name (never a built-in one).

    Returns:
        ``layout``, so that ``MY_LAYOUT = register_layout(PairLayout(...))`` reads as one line.

    Raises:
        ValueError: the name is taken (or is a built-in layout's) and ``replace`` is not set.

    >>> from legend.data import PairView, user_prompt
    >>> qa = register_layout(PairLayout(
    ...     name="qa",
    ...     description="`question`, `good`, `bad` (strings)",
    ...     columns=lambda names: ("question", "good", "bad"),
    ...     detect=lambda probe: probe.has("question", "good", "bad"),
    ...     view=lambda record, names, where: PairView(
    ...         user_prompt(where.text(record, "question")), where.text(record, "good"), where.text(record, "bad")
    ...     ),
    ... ))
    >>> detect_layout(datasets.Dataset.from_list([{"question": "Lock?", "good": "No.", "bad": "Rake it."}]))
    'qa'
    >>> unregister_layout("qa")
    """
    if not layout.name or not layout.name.strip():
        raise ValueError("a layout needs a name")
    if layout.name in _BUILTIN_NAMES or (layout.name in LAYOUTS and not replace):
        raise ValueError(f"layout {layout.name!r} is already registered")
    LAYOUTS[layout.name] = layout
    return layout


def unregister_layout(name: str) -> None:
    """Forget a layout added by `register_layout` (built-in layouts stay).

    Args:
        name: the layout's name.

    Raises:
        ValueError: for a built-in layout; KeyError for an unknown name.
    """
    if name in _BUILTIN_NAMES:
        raise ValueError(f"layout {name!r} is built in and cannot be removed")
    del LAYOUTS[name]


def layouts_markdown() -> str:
    """The table of known layouts for the README (one row per layout, its description).

    Returns:
        A Markdown table.

    >>> print(layouts_markdown().splitlines()[3])
    | `explicit` | explicit prompt: `prompt`, `chosen`, `rejected` (strings) |
    """
    rows = [f"| `{layout.name}` | {layout.description} |" for layout in _by_priority()]
    return "\n".join(["| layout | what its rows hold |", "| --- | --- |", *rows])


def layouts_help() -> str:
    """One line naming every known layout, for a command's help text.

    Returns:
        e.g. "conversational, explicit, hh, implicit or pku (detected from the columns)".

    >>> layouts_help()
    'conversational, explicit, hh, implicit or pku (detected from the columns)'
    """
    names = [layout.name for layout in _by_priority()]
    listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
    return f"{listed} (detected from the columns)"


def _by_priority() -> list[PairLayout]:
    return sorted(LAYOUTS.values(), key=lambda layout: layout.priority)  # stable: registration order breaks ties


def detect_layout(
    ds: datasets.Dataset,
    columns: ColumnNames = ColumnNames(),
    *,
    source: str = "<data>",
    transcripts: tuple[int, int] | None = None,
) -> Layout:
    """Recognise the preference layout of a table: the first registered layout, by priority, that fits.

    Column names given in ``columns`` take precedence over the usual names. When a table has both
    ``chosen``/``rejected`` and the PKU columns, the ``chosen``/``rejected`` columns win. String
    ``chosen``/``rejected`` without a prompt are ``hh`` when most rows' chosen texts are hh-rlhf
    transcripts, else ``implicit``; ``pair_views`` then refuses, naming it, each row that does not
    fit the layout chosen.

    Args:
        ds: the table (or the first chunk of a streamed input).
        columns: the user's column names (None: the usual ones).
        source: how the data is named in errors.
        transcripts: (transcripts, other texts) counted over a whole input read in chunks; None:
            counted over every row of ``ds``.

    Returns:
        The layout's name, a key of `LAYOUTS`.

    Raises:
        LayoutError: (a DataError) naming ``source``, the columns found and the ones expected when
            nothing fits, or a named column that is missing.

    >>> detect_layout(datasets.Dataset.from_list([{"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}]))
    'explicit'
    >>> detect_layout(datasets.Dataset.from_list([{"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello",
    ...                                            "rejected": "\\n\\nHuman: Hi\\n\\nAssistant: Go"}]))
    'hh'
    """
    found = list(ds.column_names)
    check_named_columns(columns, found, source)
    probe = LayoutProbe(ds, columns, transcripts)
    ordered = _by_priority()
    for layout in ordered:
        if layout.detect(probe):
            return layout.name
    expected = list(dict.fromkeys(layout.expected_columns() for layout in ordered))
    raise LayoutError(
        f"cannot recognise the preference layout; columns found: {', '.join(found) or '(none)'}; expected "
        f"{', or '.join(expected)}; name your columns with {_COLUMN_FLAGS}",
        source=source,
    )


def check_named_columns(columns: ColumnNames, found: Sequence[str], source: str) -> None:
    """Refuse a column the user named that the table does not have.

    Args:
        columns: the user's column names.
        found: the table's columns.
        source: how the data is named in the error.

    Raises:
        LayoutError: naming the column, the option that named it and the columns found.

    >>> check_named_columns(ColumnNames(chosen="answer"), ["prompt", "chosen", "rejected"], "x.jsonl")
    Traceback (most recent call last):
    ...
    legend.data.schema.LayoutError: x.jsonl: no column 'answer' (given as the chosen column); columns found: \
prompt, chosen, rejected
    """
    for option, column in (("prompt", columns.prompt), ("chosen", columns.chosen), ("rejected", columns.rejected)):
        if column is not None and column not in found:
            raise LayoutError(
                f"no column '{column}' (given as the {option} column); columns found: {', '.join(found)}",
                source=source,
            )


def pair_views(
    ds: datasets.Dataset,
    layout: Layout,
    columns: ColumnNames = ColumnNames(),
    source: str = "<data>",
) -> list[PairView]:
    """One PairView per row of a table, in order; no row is ever dropped.

    Layout specifics: hh keeps an empty final response (only an empty transcript is an error) and
    the chosen transcript's prompt; conversational takes the last message as the response (it must
    be the assistant's); pku's chosen is ``response_{safer_response_id}``; implicit's prompt is the
    longest common prefix of chosen and rejected, cut back to a whitespace boundary.

    Args:
        ds: the table.
        layout: its layout's name (see `detect_layout`).
        columns: the user's column names.
        source: how the data is named in errors.

    Returns:
        The views, one per row.

    Raises:
        DataError: naming ``source``, the 1-based row and the field of a value that is missing, not
            a string (or messages), or empty after stripping; or the columns the layout needs.
        ValueError: an unknown layout name.

    >>> ds = datasets.Dataset.from_list([{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}])
    >>> pair_views(ds, "explicit")
    [PairView(prompt=({'role': 'user', 'content': 'Hi'},), chosen='Hello', rejected='Go away')]
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    check_named_columns(columns, ds.column_names, source)
    spec, names = LAYOUTS[layout], columns.resolve()
    wanted = list(spec.columns(names))
    wanted += [c for c in spec.optional_columns(names) if c in ds.column_names and c not in wanted]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DataError(
            f"layout '{layout}' needs column(s) {', '.join(missing)}; columns found: {', '.join(ds.column_names)}",
            source=source,
        )
    views: list[PairView] = []
    table = ds.select_columns(wanted).with_format(None)  # plain Python values whatever ds's format
    for batch in table.iter(batch_size=BATCH_ROWS):
        for values in zip(*(batch[c] for c in wanted)):
            views.append(spec.view(dict(zip(wanted, values)), names, Where(source, len(views) + 1)))
    return views
