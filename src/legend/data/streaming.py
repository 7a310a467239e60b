"""Reading an input in chunks: memory stays flat whatever its size, and every row is checked before a model loads.

`iter_chunks` yields the rows in order as small Datasets (a streamed reader for .jsonl/.csv/.parquet
files, slices of `load_table` otherwise); `scan_input` is the cheap pass over all of them that
decides the layout over every row and names the first bad one; `chunk_views` gives a chunk's pair
views with row numbers counted in the whole input.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..errors import DataError
from ..io import quiet_datasets
from .builtin_layouts import IMPLICIT, count_transcripts
from .layouts import detect_layout, pair_views
from .reading import check_file_split, load_table, root_message, streamable_format
from .schema import ColumnNames, Layout, PairView
from .values import check_csv_values_kept, check_values_kept, csv_records, find_non_utf8, json_records

DEFAULT_CHUNK_ROWS = 4096


def iter_chunks(
    data: str | os.PathLike[str],
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    *,
    split: str = "train",
    limit: int | None = None,
    check_values: bool = True,
) -> Iterator[datasets.Dataset]:
    """Yield the rows of an input in order as Datasets of at most ``chunk_rows`` rows.

    Streamed files never hold more than a chunk (plus the reader's block) in memory.

    Args:
        data: anything `load_table` reads.
        chunk_rows: rows per chunk (at least 1).
        split: the split of a dataset folder or Hub dataset.
        limit: at most this many rows in all (None: every row).
        check_values: refuse a value the reading changed (see `check_values_kept`); a later pass
            over an input already checked by `scan_input` may skip it.

    Returns:
        An iterator of chunks.

    Raises:
        DataError: (from `load_table`'s checks) unreadable, malformed or empty input, or a changed value.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = path.write_text("".join(f'{{"i": {i}}}\\n' for i in range(5)))
    >>> [len(chunk) for chunk in iter_chunks(path, 2)]
    [2, 2, 1]
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    path = Path(os.fspath(data)).expanduser()
    builder = streamable_format(path)
    remaining = float("inf") if limit is None else limit
    if builder is None:
        table = load_table(data, split=split)
        stop = int(min(len(table), remaining))
        for start in range(0, stop, chunk_rows):
            yield table.select(range(start, min(start + chunk_rows, stop)))
        return
    check_file_split(str(data), split)
    seen = 0
    records = json_records(path, str(data)) if builder == "json" and check_values else None
    texts = csv_records(path) if builder == "csv" and check_values else None
    try:
        with quiet_datasets():
            stream = datasets.load_dataset(builder, data_files=glob.escape(str(path)), split="train", streaming=True)
            for batch in stream.iter(batch_size=chunk_rows):
                chunk = datasets.Dataset.from_dict(batch, features=stream.features)
                if len(chunk) > remaining - seen:
                    chunk = chunk.select(range(int(remaining - seen)))
                if records is not None:
                    check_values_kept(chunk, records, str(data), first_row=seen)
                if texts is not None:
                    check_csv_values_kept(chunk, texts, str(data), first_row=seen)
                seen += len(chunk)
                if len(chunk):
                    yield chunk
                if seen >= remaining:
                    break
    except DataError:
        raise
    except Exception as exc:  # load_table names the file and line; re-raise its one line
        not_text = find_non_utf8(path, str(data)) if builder in ("json", "csv") else None
        if not_text is not None:
            raise not_text from exc
        load_table(data, split=split)
        raise DataError(f"cannot read ({type(exc).__name__}: {exc})", source=str(data)) from exc
    if seen == 0:
        raise DataError("no rows", source=str(data))


def chunk_views(
    chunk: datasets.Dataset, layout: Layout, columns: ColumnNames, source: str, first_row: int
) -> list[PairView]:
    """`pair_views` of one chunk; a DataError names the row in the whole input, not in the chunk.

    Args:
        chunk: rows of the input.
        layout: the input's layout (from `scan_input`).
        columns: the user's column names.
        source: how the input is named in errors.
        first_row: rows of the input before this chunk.

    Returns:
        One PairView per row of the chunk.

    >>> chunk = datasets.Dataset.from_list([{"prompt": "Hi", "chosen": "Hello", "rejected": 7}])
    >>> chunk_views(chunk, "explicit", ColumnNames(), "x.jsonl", first_row=40)
    Traceback (most recent call last):
    ...
    legend.errors.DataError: x.jsonl: row 41: field 'rejected': expected a non-empty string, got int
    """
    try:
        return pair_views(chunk, layout, columns, source=source)
    except DataError as err:
        if err.row is None:
            raise
        raise DataError(
            err.reason, source=err.source, line=err.line, row=err.row + first_row, field=err.field
        ) from None


@dataclass(frozen=True)
class InputScan:
    """What the cheap pass over a whole input found: its layout and row count (every row checked)."""

    layout: Layout
    rows: int
    chunks: int


def scan_input(
    data: str | os.PathLike[str],
    columns: ColumnNames = ColumnNames(),
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    *,
    split: str = "train",
    limit: int | None = None,
    one_schema: bool = False,
) -> InputScan:
    """Read every row of an input (no model) and check it; the result does not depend on ``chunk_rows``.

    Checked: the layout (decided over all rows, not a sample), the pair texts of each row, values
    read back unchanged, and with ``one_schema`` column types that stay castable to the first chunk's.

    Args:
        data: anything `load_table` reads.
        columns: the user's column names.
        chunk_rows: rows per chunk (the same chunks as `iter_chunks`).
        split: the split of a dataset folder or Hub dataset.
        limit: at most this many rows.
        one_schema: the output is Parquet, which needs one type per column.

    Returns:
        The layout, rows and chunks.

    Raises:
        DataError: naming the first bad row.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = path.write_text('{"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}\\n' * 3)
    >>> scan_input(path, chunk_rows=2)
    InputScan(layout='explicit', rows=3, chunks=2)
    """
    source = str(data)
    first: datasets.Dataset | None = None
    layout: Layout | None = None
    schema: Any = None
    hh = other = rows = chunks = 0
    for chunk in iter_chunks(data, chunk_rows, split=split, limit=limit):
        if first is None:
            first = chunk
            layout = detect_layout(chunk, columns, source=source, transcripts=(0, 0))
            schema = chunk.data.table.schema
        elif one_schema and chunk.data.table.schema != schema:
            try:
                chunk.data.table.cast(schema)
            except Exception as exc:  # any arrow cast failure is the same user problem
                raise DataError(
                    f"the column types change from the first rows ({root_message(exc)}); a Parquet output needs "
                    "one type per column: write .jsonl instead",
                    source=source,
                    row=rows + 1,
                ) from exc
        if layout == IMPLICIT.name:  # hh or implicit: decided once every row is counted
            counted = count_transcripts(chunk, columns.resolve().chosen)
            hh, other = hh + counted[0], other + counted[1]
        else:
            assert layout is not None
            chunk_views(chunk, layout, columns, source, rows)
        rows += len(chunk)
        chunks += 1
    assert first is not None and layout is not None  # iter_chunks raises on an input without rows
    if layout == IMPLICIT.name:
        layout = detect_layout(first, columns, source=source, transcripts=(hh, other))
        done = 0
        for chunk in iter_chunks(data, chunk_rows, split=split, limit=limit, check_values=False):
            chunk_views(chunk, layout, columns, source, done)
            done += len(chunk)
    return InputScan(layout=layout, rows=rows, chunks=chunks)
