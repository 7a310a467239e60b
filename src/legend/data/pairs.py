"""The one way to read preference pairs in memory: read the table, recognise its layout, view every row."""

from __future__ import annotations

import os
from dataclasses import dataclass

import datasets

from .layouts import detect_layout, pair_views
from .reading import load_table
from .schema import ColumnNames, Layout, PairView


@dataclass(frozen=True)
class Pairs:
    """A preference table as read: its rows (unchanged), layout, one view per row, and its name in errors."""

    table: datasets.Dataset
    """The rows as read (the first ``limit`` rows when a limit was given)."""
    layout: Layout
    views: list[PairView]
    """One per row of ``table``, in order."""
    source: str
    """How the data is named in errors (the file, or "<dataset>")."""

    def __len__(self) -> int:
        return len(self.views)


def read_pairs(
    source: str | os.PathLike[str] | datasets.Dataset,
    columns: ColumnNames = ColumnNames(),
    *,
    split: str = "train",
    limit: int | None = None,
    source_name: str | None = None,
) -> Pairs:
    """Read a preference table in any registered layout: `load_table`, then `detect_layout`, then `pair_views`.

    The limit is applied first, so the layout is decided over the rows kept (as `scan_input` does).

    Args:
        source: anything `load_table` reads, or a `datasets.Dataset` already in memory.
        columns: the user's column names (None: the usual ones).
        split: the split of a dataset folder or Hub dataset.
        limit: keep only the first ``limit`` rows (None: all).
        source_name: how the data is named in errors (default: the path, or "<dataset>").

    Returns:
        The `Pairs`.

    Raises:
        DataError: the input cannot be read, fits no layout (a `LayoutError`), or a row is bad
            (naming the row and field).

    >>> table = datasets.Dataset.from_list([
    ...     {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
    ...     {"prompt": "Lock?", "chosen": "No.", "rejected": "Rake it."},
    ... ])
    >>> pairs = read_pairs(table, limit=1)
    >>> pairs.layout, len(pairs), pairs.views[0].chosen, pairs.source
    ('explicit', 1, 'Hello', '<dataset>')
    """
    if isinstance(source, datasets.Dataset):
        table, name = source, source_name or "<dataset>"
    else:
        table, name = load_table(source, split=split), source_name or os.fspath(source)
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    layout = detect_layout(table, columns, source=name)
    return Pairs(table=table, layout=layout, views=pair_views(table, layout, columns, source=name), source=name)
