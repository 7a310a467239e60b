"""The one reader of a numeric margin column (`margin`, `margin_raw`, an ensemble's, a level column).

Every consumer of margins (reward training, DPO, evaluation, the report) reads them here, so a
missing column, a null, a boolean, a string or a non-finite value is refused the same way: one
`DataError` naming the row (1-based) and the field.
"""

from __future__ import annotations

import math

import datasets
import numpy as np

from ..errors import DataError


def read_margin_column(table: datasets.Dataset, column: str, *, source: str, instead: str | None = None) -> np.ndarray:
    """A margin column as float64, every value checked to be a finite number.

    Integers and floats are accepted; None/null, booleans (True is not a margin of 1), strings (even
    "1.5": the column's type is wrong, and writing it back would change it), other types, NaN and
    ±inf are refused.

    Args:
        table: the preference table.
        column: the column's name.
        source: how the data is named in errors.
        instead: what else the user may do when the column is missing (e.g. "turn the offset off"),
            added to the hint to run `legend annotate`.

    Returns:
        The values, one per row.

    Raises:
        DataError: a missing column (naming the columns found), or the row and field of a bad value.

    >>> table = datasets.Dataset.from_list([{"margin": 2}, {"margin": 0.5}])
    >>> read_margin_column(table, "margin", source="x.jsonl")
    array([2. , 0.5])
    >>> read_margin_column(table, "margin_raw", source="x.jsonl")
    Traceback (most recent call last):
    ...
    legend.errors.DataError: x.jsonl: no column 'margin_raw'; columns found: margin; run `legend annotate` to add \
margins
    >>> read_margin_column(datasets.Dataset.from_list([{"m": 1.0}, {"m": None}]), "m", source="x.jsonl")
    Traceback (most recent call last):
    ...
    legend.errors.DataError: x.jsonl: row 2: field 'm': expected a finite number, got None
    """
    if column not in table.column_names:
        hint = "run `legend annotate` to add margins" + (f", or {instead}" if instead else "")
        raise DataError(
            f"no column {column!r}; columns found: {', '.join(table.column_names) or '(none)'}; {hint}",
            source=source,
        )
    values = table.select_columns([column]).with_format(None)[column]
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values, start=1):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"expected a finite number, got {value!r}", source=source, row=row, field=column)
        out[row - 1] = value
    return out
