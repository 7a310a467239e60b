"""Reading an input in chunks: memory stays flat whatever its size, and every row is checked before a model loads.

`iter_chunks` yields the rows in order as small Datasets (a streamed reader for .jsonl/.csv/.parquet
files, slices of `load_table` otherwise); `scan_input` is the cheap pass over all of them that
decides the layout over every row and names the first bad one; `chunk_views` gives a chunk's pair
views with row numbers counted in the whole input.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..errors import DataError
from ..io import check_output_values, quiet_datasets
from .builtin_layouts import IMPLICIT, count_transcripts
from .csv_values import CSV_READ_OPTIONS, check_csv_header, check_csv_values_kept, csv_records
from .json_values import JSON_READ_OPTIONS, check_values_kept, json_records
from .layouts import detect_layout, pair_views
from .reading import (
    check_file_split,
    input_format,
    load_table,
    parquet_rows,
    root_message,
    streamable_format,
)
from .schema import ColumnNames, Layout, PairView
from .values import find_non_utf8

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
    if builder == "parquet":
        yield from _parquet_chunks(path, str(data), chunk_rows, remaining)
        return
    if builder == "csv":
        check_csv_header(path, str(data))
    seen = 0
    records = json_records(path, str(data)) if builder == "json" and check_values else None
    texts = csv_records(path) if builder == "csv" and check_values else None
    # JSON: read exactly by pyarrow first; what pyarrow cannot read (a column mixing types, a NaN literal) goes to
    # datasets' own reading (whose float rounding the value check then names), restarting after the rows given.
    attempts = [CSV_READ_OPTIONS] if builder == "csv" else [JSON_READ_OPTIONS, {}]
    for attempt, options in enumerate(attempts):
        skip = seen
        try:
            # A throw-away cache: `datasets` would otherwise leave a .lock file per input in ~/.cache/huggingface.
            with quiet_datasets(), tempfile.TemporaryDirectory(prefix="legend-datasets-") as cache:
                stream = datasets.load_dataset(
                    builder,
                    data_files=glob.escape(str(path)),
                    split="train",
                    streaming=True,
                    cache_dir=cache,
                    **options,
                )
                for batch in stream.iter(batch_size=chunk_rows):
                    if skip > 0:  # given by the attempt before
                        skip -= len(next(iter(batch.values()), []))
                        continue
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
            break
        except DataError:
            raise
        except Exception as exc:  # load_table names the file and line; re-raise its one line
            if attempt + 1 < len(attempts):  # a column mixing types, a NaN literal: datasets' own reader
                continue
            not_text = find_non_utf8(path, str(data)) if builder in ("json", "csv") else None
            if not_text is not None:
                raise not_text from exc
            load_table(data, split=split)
            raise DataError(f"cannot read ({type(exc).__name__}: {exc})", source=str(data)) from exc
    if seen == 0:
        raise DataError("no rows", source=str(data))


def _parquet_chunks(path: Path, source: str, chunk_rows: int, remaining: float) -> Iterator[datasets.Dataset]:
    """A Parquet file's rows in chunks of `chunk_rows`, read by pyarrow as they are stored (no conversion through
    Python values: nanosecond timestamps, unsigned 64-bit integers and the like come back exactly)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if parquet_rows(path, source) == 0:
        raise DataError("no rows (the Parquet file has its columns but 0 rows)", source=source)
    handle = pq.ParquetFile(path)
    names = handle.schema_arrow.names
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise DataError(f"the column '{repeated}' appears twice; give each column its own name", source=source)
    seen = 0
    pending: list[Any] = []
    pending_rows = 0

    def chunk_of(batches: list[Any]) -> datasets.Dataset:
        table = pa.Table.from_batches(batches, schema=handle.schema_arrow)
        try:
            return datasets.Dataset(table)
        except (ValueError, TypeError) as exc:
            bad = next((f for f in table.schema if not _datasets_can_hold(f)), None)
            what = f"the column '{bad.name}' has the Arrow type {bad.type}, which" if bad is not None else "it"
            raise DataError(
                f"{what} `datasets` (which legend reads through) cannot hold ({root_message(exc)})", source=source
            ) from exc

    try:
        for batch in handle.iter_batches(batch_size=chunk_rows):
            while batch.num_rows:
                take = min(batch.num_rows, chunk_rows - pending_rows, int(min(remaining - seen - pending_rows, 2**62)))
                if take <= 0:
                    break
                pending.append(batch.slice(0, take))
                pending_rows += take
                batch = batch.slice(take)
                if pending_rows == chunk_rows or seen + pending_rows >= remaining:
                    yield chunk_of(pending)
                    seen += pending_rows
                    pending, pending_rows = [], 0
            if seen >= remaining:
                return
    except DataError:
        raise
    except Exception as exc:  # a damaged page, a decompression error: one line naming the file
        raise DataError(f"could not read as parquet: {root_message(exc)}", source=source) from exc
    if pending_rows:
        yield chunk_of(pending)


def _datasets_can_hold(field: Any) -> bool:
    try:
        datasets.Features.from_arrow_schema(__import__("pyarrow").schema([field]))
    except (ValueError, TypeError, NotImplementedError):
        return False
    return True


def content_digest(data: str | os.PathLike[str]) -> str | None:
    """sha256 of what a local input holds: a file's bytes, or a folder's files (relative path and bytes, in name
    order, hidden ones left out); None for anything else (a Hub name: `scan_input` then hashes the rows it read).

    Args:
        data: the input as given.

    Returns:
        "sha256:<hex>", or None.
    """
    path = Path(os.fspath(data)).expanduser()
    digest = hashlib.sha256()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    else:
        return None
    for file in files:
        if file != path:
            digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


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
    """What the cheap pass over a whole input found: its layout, row count and content (every row checked)."""

    layout: Layout
    rows: int
    chunks: int
    content: str | None = None
    """sha256 of the input as read (`content_digest`: a file's bytes, a folder's files; the rows for a Hub
    dataset): what identifies it for resuming, whatever its path, size or modification time say."""
    columns: tuple[str, ...] = ()
    """The input's columns, in order."""


def scan_input(
    data: str | os.PathLike[str],
    columns: ColumnNames = ColumnNames(),
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    *,
    split: str = "train",
    limit: int | None = None,
    one_schema: bool = False,
    output: str | os.PathLike[str] | None = None,
) -> InputScan:
    """Read every row of an input (no model) and check it; the result does not depend on ``chunk_rows``.

    Checked: the layout (decided over all rows, not a sample), the pair texts of each row, values
    read back unchanged, with ``one_schema`` column types that stay castable to the first chunk's,
    and with ``output`` every column type and value that output file can hold exactly
    (`legend.io.check_output_values`). The content is hashed on the way (`InputScan.content`).

    Args:
        data: anything `load_table` reads.
        columns: the user's column names.
        chunk_rows: rows per chunk (the same chunks as `iter_chunks`).
        split: the split of a dataset folder or Hub dataset.
        limit: at most this many rows.
        one_schema: the output is Parquet, which needs one type per column.
        output: the output file the rows will be written to (None: not checked).

    Returns:
        The layout, rows, chunks, content hash and columns.

    Raises:
        DataError: naming the first bad row.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = path.write_text('{"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}\\n' * 3)
    >>> scan = scan_input(path, chunk_rows=2)
    >>> scan.layout, scan.rows, scan.chunks, scan.content[:7]
    ('explicit', 3, 2, 'sha256:')
    """
    source = str(data)
    first: datasets.Dataset | None = None
    layout: Layout | None = None
    schema: Any = None
    hh = other = rows = chunks = 0
    content = content_digest(data)
    rows_digest = hashlib.sha256() if content is None else None
    builder = input_format(Path(os.fspath(data))) if Path(os.fspath(data)).is_file() else None
    for chunk in iter_chunks(data, chunk_rows, split=split, limit=limit):
        if rows_digest is not None:
            rows_digest.update(json.dumps(chunk.with_format(None).to_list(), default=str, ensure_ascii=False).encode())
        if output is not None:
            check_output_values(chunk, output, source=source, first_row=rows, read_from=builder)
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
    if rows_digest is not None:
        content = "sha256:" + rows_digest.hexdigest()
    return InputScan(layout=layout, rows=rows, chunks=chunks, content=content, columns=tuple(first.column_names))
