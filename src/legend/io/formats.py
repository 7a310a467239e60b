"""What each output format can hold exactly: `check_output_type` (the suffixes legend writes) and
`check_output_values` (column types and values a format would change, refused before any work), so legend
reads back what it writes in every format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets

from ..errors import DataError

OUTPUT_FORMATS = (".jsonl", ".json", ".parquet", ".csv")


BATCH_ROWS = 4096


def check_output_type(path: str | os.PathLike[str]) -> str:
    """The lower-cased suffix of an output file, or a DataError when legend cannot write that type."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise DataError(
            f"unknown output file type '{Path(path).suffix or '(none)'}'; use .jsonl, .json, .parquet or .csv",
            source=str(path),
        )
    return suffix


def nested_columns(features: datasets.Features) -> list[str]:
    """Columns CSV cannot hold (lists, structs: anything but a plain value)."""
    return [c for c, f in features.items() if not isinstance(f, (datasets.Value, datasets.ClassLabel))]


ALTERNATIVES = {".csv": ".jsonl, .json or .parquet", ".jsonl": ".parquet", ".json": ".parquet", ".parquet": ".jsonl"}


def _unwritable(kind: Any, suffix: str) -> str | None:
    """Why a column of Arrow type `kind` cannot be written to a `suffix` file exactly, or None when it can."""
    import pyarrow as pa

    types = pa.types
    if suffix == ".parquet":
        return None
    if types.is_dictionary(kind):
        return _unwritable(kind.value_type, suffix)
    nested = types.is_list(kind) or types.is_large_list(kind) or types.is_fixed_size_list(kind)
    if types.is_struct(kind) or types.is_map(kind) or nested:
        if suffix == ".csv":
            return "CSV holds plain values only, not lists or objects"
        children = [kind.value_type] if nested else [kind.field(i).type for i in range(kind.num_fields)]
        return next((why for why in (_unwritable(child, suffix) for child in children) if why), None)
    if types.is_temporal(kind):
        return "it would come back as text, not as a date or time"
    if types.is_decimal(kind):
        return "it would come back as a float, not as a decimal"
    if types.is_binary(kind) or types.is_large_binary(kind) or types.is_fixed_size_binary(kind):
        return "it holds bytes, which a text file cannot hold"
    return None


def _looks_typed(text: str) -> str | None:
    """What a CSV reader would read `text` as when it is not kept as text (None: it stays text)."""
    if text == "":
        return "a missing value (CSV cannot tell an empty string from an empty cell)"
    if text.strip().lower() in ("true", "false"):
        return "a boolean"
    try:
        float(text)
    except ValueError:
        return None
    return "a number"


def check_output_values(
    chunk: datasets.Dataset,
    output: str | os.PathLike[str],
    *,
    source: str | None = None,
    first_row: int = 0,
    read_from: str | None = None,
) -> None:
    """Refuse, before any work, a column type or value that `output` cannot hold exactly (legend reads back what it
    writes, in every format).

    Parquet holds every type legend reads. JSON has no dates, times, decimals or bytes (they would
    come back as text or floats). CSV holds plain values only (no lists or objects), has none of
    those types either, cannot tell an empty string from a missing value, and its reader types a
    column by its texts, so a text that reads as a number or boolean, or a NaN or infinite float,
    would come back changed; cells read from a CSV file are written back as they were, so a CSV
    input passes.

    Args:
        chunk: rows about to be written (their columns as read).
        output: the output file.
        source: the input, named in a row-level error (default: the output).
        first_row: rows before this chunk, for the row number.
        read_from: the input's format ("json", "csv", "parquet"; None for a dataset folder or the Hub).

    Raises:
        DataError: naming the column (and the row, for a value).

    >>> rows = datasets.Dataset.from_list([{"prompt": "p", "note": ""}])
    >>> check_output_values(rows, "out.csv", source="in.jsonl")
    Traceback (most recent call last):
    ...
    legend.errors.DataError: in.jsonl: row 1: field 'note': the text "" would be read back from a CSV file as a \
missing value (CSV cannot tell an empty string from an empty cell): write .jsonl, .json or .parquet instead
    """
    suffix = check_output_type(output)
    schema = chunk.data.table.schema
    for field in schema:
        why = _unwritable(field.type, suffix)
        if why:
            raise DataError(
                f"the column '{field.name}' is {field.type}, which a {suffix} file cannot hold exactly ({why}): "
                f"write {ALTERNATIVES[suffix]} instead",
                source=str(output),
            )
    if suffix != ".csv" or read_from == "csv":
        return
    import pyarrow as pa

    texts = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    if not texts and not floats:
        return
    names = texts + floats
    row = first_row
    for batch in chunk.select_columns(names).with_format(None).iter(batch_size=BATCH_ROWS):
        for values in zip(*(batch[c] for c in names)):
            row += 1
            for name, value in zip(names, values):
                if value is None:
                    continue
                if isinstance(value, str):
                    what = _looks_typed(value)
                    shown = json.dumps(value, ensure_ascii=False)
                elif value != value or value in (float("inf"), float("-inf")):
                    what, shown = "text, not a number", str(value)
                else:
                    continue
                if what:
                    raise DataError(
                        f"the {'text' if isinstance(value, str) else 'value'} {shown[:40]} would be read back from "
                        f"a CSV file as {what}: write {ALTERNATIVES[suffix]} instead",
                        source=source or str(output),
                        row=row,
                        field=name,
                    )
