"""CSV read exactly: the header refused when the reader would rename a column (`check_csv_header`), each row's cell
texts (`csv_records`), the check that type inference changed no cell ("007" read as 7, "NA" read as null:
`check_csv_values_kept`), and how legend asks `datasets` to read CSV (`CSV_READ_OPTIONS`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from ..errors import DataError
from .values import BATCH_ROWS, open_text, shown

CSV_READ_OPTIONS: dict[str, Any] = {"keep_default_na": False, "na_values": [""]}
"""How legend reads CSV (passed to pandas through `datasets`): only an empty cell is a missing value; "NA", "null",
"None", "nan" are texts, as written (pandas' default would read them as missing, and legend would write them back
changed)."""


def check_csv_header(path: Path, name: str, *, unnamed: bool = False) -> list[str]:
    """The header of a CSV file, refused when the reader would rename a column.

    A column named twice comes back from the reader as `name` and `name.1` (and its values may be
    taken for the other's); a column without a name as `Unnamed: <i>`, which is refused unless
    `unnamed` (reading questions or pairs, where the column is not written back: pandas writes its
    index that way).

    Args:
        path: the CSV file, possibly .gz-compressed.
        name: how it is named in errors.
        unnamed: accept a column without a name.

    Returns:
        The column names, in order.

    Raises:
        DataError: naming the repeated or missing column name.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.csv"
    >>> _ = path.write_text("prompt,chosen,rejected,chosen\\nq,a,b,c\\n")
    >>> check_csv_header(path, "x.csv")
    Traceback (most recent call last):
    ...
    legend.errors.DataError: x.csv: line 1: the header names the column 'chosen' twice (columns 2 and 4); the reader \
would rename the second to 'chosen.1': give each column its own name
    """
    with open_text(path) if path.suffix.lower() == ".gz" else open(path, encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        return []
    header = [header[0].lstrip("\ufeff"), *header[1:]]
    first: dict[str, int] = {}
    for position, column in enumerate(header, start=1):
        if not column.strip() and not unnamed:
            raise DataError(
                f"column {position} of the header has no name, and legend writes every column back: the reader "
                f"would call it 'Unnamed: {position - 1}'; give every column a name",
                source=name,
                line=1,
            )
        if column in first:
            raise DataError(
                f"the header names the column '{column}' twice (columns {first[column]} and {position}); the reader "
                f"would rename the second to '{column}.1': give each column its own name",
                source=name,
                line=1,
            )
        first[column] = position
    return header


def csv_records(path: Path) -> Iterator[dict[str, str]]:
    """The rows of a CSV file as the texts written in it.

    Args:
        path: a .csv file, possibly .gz-compressed.

    Returns:
        An iterator of {header: cell text} per row.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.csv"
    >>> _ = path.write_text("a,b\\n007,x\\n")
    >>> list(csv_records(path))
    [{'a': '007', 'b': 'x'}]
    """
    with open_text(path) if path.suffix.lower() == ".gz" else open(path, encoding="utf-8", newline="") as handle:
        yield from csv.DictReader(handle)


def _csv_kept(text: str | None, read: Any) -> bool:
    """True when a CSV cell read as `read` is written back as the same value `text` held."""
    if text is None:
        return read is None
    if read is None or (isinstance(read, float) and read != read):
        return not text  # only an empty cell is missing ("NA", "null", "None" are texts: CSV_READ_OPTIONS)
    if isinstance(read, bool):
        return text.strip().lower() == str(read).lower()
    if isinstance(read, int):
        return text.strip() == str(read)  # "007" -> 7 or "+5" -> 5 lose what was written
    if isinstance(read, float):
        try:
            return float(text) == read
        except ValueError:
            return False
    if isinstance(read, str):
        return read == text
    return True  # dates and other inferred types: pandas' own reading


def check_csv_values_kept(
    ds: datasets.Dataset, records: Iterator[dict[str, str]], source: str, first_row: int = 0
) -> None:
    """Refuse a CSV whose type inference changed a cell ("007" read as 7, "NA" read as null).

    Args:
        ds: the rows as `datasets` read them.
        records: the same rows as `csv_records` reads them.
        source: the file, for the error.
        first_row: rows of the file before ``ds`` (a chunk's offset).

    Raises:
        DataError: naming the row and field of the first changed cell.

    >>> check_csv_values_kept(datasets.Dataset.from_list([{"a": 7}]), iter([{"a": "007"}]), "x.csv")
    Traceback (most recent call last):
    ...
    legend.errors.DataError: x.csv: row 1: field 'a': the text "007" would be read as 7 (int) and written back \
changed; legend never changes a value: give this data as .jsonl or .parquet (typed formats) instead
    """
    names = ds.column_names
    row = first_row
    for batch in ds.with_format(None).iter(batch_size=BATCH_ROWS):
        for values in zip(*(batch[c] for c in names)):
            row += 1
            original = next(records, None)
            if original is None:
                return
            for name, value in zip(names, values):
                if name in original and not _csv_kept(original[name], value):
                    raise DataError(
                        f"the text {shown(original[name])} would be read as {shown(value)} "
                        f"({type(value).__name__}) and written back changed; legend never changes a value: "
                        "give this data as .jsonl or .parquet (typed formats) instead",
                        source=source,
                        row=row,
                        field=name,
                    )
