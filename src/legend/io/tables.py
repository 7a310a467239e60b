"""Record tables: `ChunkWriter` (a .jsonl/.json/.parquet/.csv file appended chunk by chunk, appearing only when
closed cleanly, each input record written back exactly as read) and `write_table` (one Dataset at once), and
`quiet_datasets` (the `datasets` progress bars and log lines silenced).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import datasets

from ..errors import DataError
from .atomic import atomic_path
from .formats import BATCH_ROWS, check_output_type, check_output_values, nested_columns
from .json_file import json_default


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence `datasets` progress bars and log lines, restoring them after."""
    # The bars are noise for local files, and on a parse failure `datasets`
    # logs its own error line before raising; we report a better one.
    bars_were_off = datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.enable_progress_bars()


def csv_text(value: Any) -> str:
    """How legend writes one value in a CSV cell: the cell legend's CSV reader reads back as that value.

    >>> [csv_text(v) for v in (None, True, 7, 0.1, "NA")]
    ['', 'True', '7', '0.1', 'NA']
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    if hasattr(value, "tolist"):
        return csv_text(value.tolist())
    return str(value)


class ChunkWriter:
    """Append Datasets to a .jsonl/.json/.parquet/.csv file; the file appears at `path` only when closed cleanly.

    JSON and CSV are written by us, not by `Dataset.to_json`/pandas: pandas writes floats with 10
    digits, escapes "/", writes a missing value and an empty string alike and makes floats of
    integers beside missing values. Unicode is written as is and floats keep full precision.

    Exactly as read: `write(chunk, originals=..., added=...)` takes each row's record as the input
    file held it (`legend.data.json_records` of a JSON input, `csv_records` of a CSV one) and writes
    it back with only the `added` columns set, so a JSON row missing a key does not gain `"key": null`
    and a CSV cell keeps its text. A Parquet output written `like` an input schema keeps each input
    column's Arrow type (a dictionary column stays one).
    """

    def __init__(self, path: str | os.PathLike[str], *, like: Any = None) -> None:
        self.path = Path(path)
        self.suffix = check_output_type(path)
        self.rows = 0
        self.like = like
        self._stack = contextlib.ExitStack()
        self._handle: IO[str] | None = None
        self._parquet: Any = None
        self._csv: Any = None
        self._first = True
        self._temporary = self.path

    def __enter__(self) -> ChunkWriter:
        self._temporary = self._stack.enter_context(atomic_path(self.path))
        if self.suffix != ".parquet":
            self._handle = self._stack.enter_context(open(self._temporary, "w", encoding="utf-8", newline="\n"))
            if self.suffix == ".json":
                self._handle.write("[")
        return self

    def write(
        self,
        chunk: datasets.Dataset,
        originals: Sequence[Any] | None = None,
        added: Sequence[str] = (),
    ) -> None:
        """Append `chunk`; with `originals` (one input record per row, JSON or CSV), only `added` columns come from
        `chunk` and every other value is the record's own (see the class)."""
        if originals is not None and len(originals) != len(chunk):
            raise ValueError(f"{len(originals)} original records for {len(chunk)} rows")
        if self.suffix == ".parquet":
            self._write_parquet(chunk)
        elif self.suffix == ".csv":
            self._write_csv(chunk, originals, added)
        else:
            self._write_json(chunk, originals, added)
        self.rows += len(chunk)

    def _text(self) -> IO[str]:
        assert self._handle is not None, "ChunkWriter used outside its `with` block"
        return self._handle

    def _rows(self, chunk: datasets.Dataset) -> Iterator[dict[str, Any]]:
        names = chunk.column_names
        for batch in chunk.with_format(None).iter(batch_size=BATCH_ROWS):
            for values in zip(*(batch[c] for c in names)):
                yield dict(zip(names, values))

    def _write_json(self, chunk: datasets.Dataset, originals: Sequence[Any] | None, added: Sequence[str]) -> None:
        handle = self._text()
        for index, row in enumerate(self._rows(chunk)):
            if originals is not None and isinstance(originals[index], dict):
                record = dict(originals[index])
                for name in added:
                    record[name] = row[name]
                row = record
            line = json.dumps(row, ensure_ascii=False, default=json_default)
            if self.suffix == ".json":
                handle.write(("\n" if self._first else ",\n") + line)
                self._first = False
            else:
                handle.write(line + "\n")

    def _write_parquet(self, chunk: datasets.Dataset) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = chunk.with_format("arrow")[:]
        if self._parquet is None:
            schema = table.schema
            if self.like is not None:  # the input's own Arrow types (datasets decodes dictionary columns)
                kept = {f.name: f for f in self.like}
                schema = pa.schema([kept.get(f.name, f) for f in table.schema], metadata=table.schema.metadata)
                if schema != table.schema:
                    table = table.cast(schema)
            self._parquet = self._stack.enter_context(pq.ParquetWriter(str(self._temporary), schema))
        elif table.schema != self._parquet.schema:
            try:
                table = table.cast(self._parquet.schema)
            except Exception as exc:  # any arrow cast failure is the same user problem
                raise DataError(
                    f"row {self.rows + 1}: the column types change from the first rows ({exc}); write .jsonl instead",
                    source=str(self.path),
                ) from exc
        self._parquet.write_table(table)

    def _write_csv(self, chunk: datasets.Dataset, originals: Sequence[Any] | None, added: Sequence[str]) -> None:
        import csv

        nested = nested_columns(chunk.features)
        if nested:
            raise DataError(
                f"CSV cannot hold nested column(s) {', '.join(nested)}; write .jsonl, .json or .parquet instead",
                source=str(self.path),
            )
        names = chunk.column_names
        if self._csv is None:
            self._csv = csv.writer(self._text(), lineterminator="\n")
            self._csv.writerow(names)
        kept = set(added)
        for index, row in enumerate(self._rows(chunk)):
            original = originals[index] if originals is not None else None
            self._csv.writerow(
                [
                    (original.get(name) or "")
                    if isinstance(original, dict) and name not in kept and name in original
                    else csv_text(row[name])
                    for name in names
                ]
            )

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is None and self.suffix == ".json":
            self._text().write("]\n" if self.rows == 0 else "\n]\n")
        self._stack.__exit__(kind, error, traceback)


def write_table(
    ds: datasets.Dataset,
    path: str | os.PathLike[str],
    *,
    originals: Sequence[Any] | None = None,
    added: Sequence[str] = (),
) -> None:
    """Write ``ds`` atomically; the format follows the extension.

    ``.jsonl`` (one JSON object per line), ``.json`` (a JSON list of records),
    ``.parquet`` or ``.csv``. Nested columns (chat messages) round-trip in jsonl/json/parquet;
    a column type or value the format cannot hold exactly (`check_output_values`: CSV and nested
    columns, JSON and dates, ...) is refused before anything is written. Parent folders are created.
    With `originals` (the input's own records, one per row) only the `added` columns come from ``ds``
    (see `ChunkWriter.write`).
    """
    check_output_values(ds, path)
    with quiet_datasets(), ChunkWriter(path) as writer:
        writer.write(ds, originals, added)
