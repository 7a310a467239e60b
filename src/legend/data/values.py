"""Values read back unchanged: the raw records of a JSON or CSV file, and the checks that reading kept them.

Arrow gives each column one type, so `datasets` may change a value while reading (the string "1"
among integers, "007" read as 7 from a CSV, a date-like text turned into a timestamp). legend never
writes a changed value: these checks compare what `datasets` read with the file's own records and
name the first value that differs. `find_non_utf8` names a byte that is not text before Arrow
would fail on it.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from ..errors import DataError

BATCH_ROWS = 4096
"""Rows are read in batches of this size: far faster than `ds[i]` per row and bounded in memory."""


def describe(value: Any) -> str:
    """How a bad value is named in error messages.

    Args:
        value: any value read from a row.

    Returns:
        "null", "an empty string", "a string", or the type's name.

    >>> describe(None), describe("  "), describe("x"), describe(3)
    ('null', 'an empty string', 'a string', 'int')
    """
    if value is None:
        return "null"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    return type(value).__name__


def open_text(path: Path) -> Any:
    """Open a (possibly .gz-compressed) file as UTF-8 text.

    Args:
        path: the file; a ``.gz`` suffix means gzip.

    Returns:
        An open text handle (use it as a context manager).
    """
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def open_binary(path: Path) -> Any:
    """Open a (possibly .gz-compressed) file as bytes.

    Args:
        path: the file; a ``.gz`` suffix means gzip.

    Returns:
        An open binary handle (use it as a context manager).
    """
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def find_non_utf8(path: Path, name: str) -> DataError | None:
    """The first byte that is not UTF-8, as a DataError naming its line and byte offset.

    Args:
        path: the file to scan (for a .gz file the offset counts the uncompressed bytes).
        name: how the file is named in the error.

    Returns:
        The DataError to raise, or None when the whole file is text.

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = bad.write_bytes(b'{"a": 1}\\n{"a": "caf\\xe9"}\\n')
    >>> str(find_non_utf8(bad, "x.jsonl"))
    'x.jsonl: line 2: not UTF-8 text: byte 0xe9 at byte offset 19 (invalid continuation byte)'
    """
    offset = 0
    try:
        with open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    where = offset + exc.start
                    unit = " (uncompressed)" if path.suffix.lower() == ".gz" else ""
                    return DataError(
                        f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset {where}{unit} ({exc.reason})",
                        source=name,
                        line=number,
                    )
                offset += len(raw)
    except (OSError, EOFError) as exc:
        return DataError(f"could not read: {exc}", source=name)
    return None


def json_records(path: Path, name: str) -> Iterator[Any]:
    """The records of a JSON Lines file (or a .json list of records) exactly as `json.loads` reads them.

    Args:
        path: a .jsonl/.json file, possibly .gz-compressed.
        name: how the file is named (kept for symmetry with the other readers).

    Returns:
        An iterator over the records, in file order.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = path.write_text('{"a": 1}\\n\\n{"a": "1"}\\n')
    >>> list(json_records(path, "x.jsonl"))
    [{'a': 1}, {'a': '1'}]
    """
    if path.name.lower().endswith((".json", ".json.gz")):
        with open_text(path) as handle:
            head = handle.read(4096).lstrip("\ufeff \t\r\n")
            if head.startswith("["):
                yield from json.loads(head + handle.read())
                return
    with open_binary(path) as handle:
        for raw in handle:
            text = raw.decode("utf-8").strip().lstrip("\ufeff")
            if text:
                yield json.loads(text)


def _kept(original: Any, read: Any) -> bool:
    """True when `read` is `original` with the same types (a dict may gain keys holding None)."""
    if isinstance(original, dict):
        return (
            isinstance(read, dict)
            and all(k in read and _kept(v, read[k]) for k, v in original.items())
            and all(read[k] is None for k in read if k not in original)
        )
    if isinstance(original, list):
        return isinstance(read, list) and len(read) == len(original) and all(map(_kept, original, read))
    if type(original) is not type(read):
        return False
    return original == read or (original != original and read != read)  # NaN


def _first_change(original: Any, read: Any, path: str = "") -> tuple[str, Any, Any]:
    if isinstance(original, dict) and isinstance(read, dict):
        for key, value in original.items():
            if key in read and not _kept(value, read[key]):
                return _first_change(value, read[key], f"{path}.{key}" if path else str(key))
    if isinstance(original, list) and isinstance(read, list) and len(original) == len(read):
        for index, (a, b) in enumerate(zip(original, read)):
            if not _kept(a, b):
                return _first_change(a, b, f"{path}[{index}]")
    return path, original, read


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return (text[:40] + "...") if len(text) > 43 else text


def check_values_kept(ds: datasets.Dataset, records: Iterator[Any], source: str, first_row: int = 0) -> None:
    """Refuse a table whose reading changed a value of the JSON it came from (types included).

    Arrow gives each column one type, so a column mixing types (the string "1" among integers, an
    integer among floats, integers beyond 64 bits) comes back changed; legend would then write the
    changed value.

    Args:
        ds: the rows as `datasets` read them.
        records: the same rows as `json_records` reads them (consumed as far as ``ds`` goes).
        source: the file, for the error.
        first_row: rows of the file before ``ds`` (a chunk's offset), for the row number.

    Raises:
        DataError: naming the row and field of the first changed value.

    >>> check_values_kept(datasets.Dataset.from_list([{"a": 1}, {"a": 2}]), iter([{"a": 1}, {"a": 2}]), "x")
    >>> check_values_kept(datasets.Dataset.from_list([{"a": 1.0}]), iter([{"a": 1}]), "x.jsonl")
    Traceback (most recent call last):
    ...
    legend.errors.DataError: x.jsonl: row 1: field 'a': 1 (int) would be read as 1.0 (float) and legend never \
writes a changed value: the column mixes types between rows; give this field one type in every row
    """
    names = ds.column_names
    row = first_row
    for batch in ds.with_format(None).iter(batch_size=BATCH_ROWS):
        for values in zip(*(batch[c] for c in names)):
            row += 1
            original = next(records, None)
            if not isinstance(original, dict):
                return  # not a list of records: load_table reports the file's shape itself
            read = dict(zip(names, values))
            if _kept(original, read):
                continue
            missing = next((k for k in original if k not in read), None)
            if missing is not None:
                raise DataError(
                    "the field was not read (a column name repeated?)", source=source, row=row, field=missing
                )
            field = next(k for k in original if not _kept(original[k], read[k]))
            where, before, after = _first_change(original[field], read[field])
            if isinstance(before, str) and hasattr(after, "isoformat"):
                hint = "the JSON reader turns date-like text into timestamps; give this data as .parquet instead"
            else:
                hint = "the column mixes types between rows; give this field one type in every row"
            raise DataError(
                f"{where + ': ' if where else ''}{_shown(before)} ({type(before).__name__}) would be read as "
                f"{_shown(after)} ({type(after).__name__}) and legend never writes a changed value: {hint}",
                source=source,
                row=row,
                field=field,
            )


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
        return not text.strip()  # only an empty cell may become null ("NA", "null", "None" are values)
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
                        f"the text {_shown(original[name])} would be read as {_shown(value)} "
                        f"({type(value).__name__}) and written back changed; legend never changes a value: "
                        "give this data as .jsonl or .parquet (typed formats) instead",
                        source=source,
                        row=row,
                        field=name,
                    )
