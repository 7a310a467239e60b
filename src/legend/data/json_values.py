"""JSON read exactly: a JSON file's own records (`json_records`, `parse_json`: a key repeated in one object or a
lone surrogate escape refused), the check that `datasets` kept every value and its type (`check_values_kept`),
the row behind pyarrow's mixed-type error (`mixed_type_error`), and how legend asks `datasets` to read JSON
(`JSON_READ_OPTIONS`).

Arrow gives each column one type, so `datasets` may change a value while reading (the string "1" among
integers, a date-like text turned into a timestamp). legend never writes a changed value: the check compares
what `datasets` read with the file's own records and names the first value that differs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from ..errors import DataError
from .values import BATCH_ROWS, describe, open_binary, open_text, shown


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json` object hook: a key given twice in one object is an error (JSON would keep only its last value)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return record


# A \uD800-\uDFFF escape: half of a UTF-16 surrogate pair. A pair written as two escapes is one character once
# decoded; one alone decodes to a code point that is not text (UTF-8 cannot encode it).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate(value: Any, where: str = "") -> tuple[str, str] | None:
    """(field path, the code point as \\uXXXX) of the first string (or key) holding a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return where, f"\\u{ord(value[err.start]):04x}"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, where) or _lone_surrogate(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{where}[{index}]")
            if found:
                return found
    return None


def parse_json(text: str, source: str, *, line: int | None = None, row: int | None = None) -> Any:
    """`json.loads`, refusing what JSON's syntax allows but legend cannot keep: a key repeated in one object (JSON
    keeps its last value only, so a value would be dropped silently) and a lone UTF-16 surrogate escape (not text).

    Args:
        text: one JSON value (a line of a JSON Lines file, or a whole document).
        source: the file, for the error.
        line: the line it came from, for the error.
        row: the record it is, for the error.

    Returns:
        The value, as `json.loads` gives it.

    Raises:
        DataError: naming the repeated key or the field holding the surrogate; json.JSONDecodeError for bad syntax.

    >>> parse_json('{"chosen": "a", "chosen": "b"}', "x.jsonl", line=3)
    Traceback (most recent call last):
    ...
    legend.errors.DataError: x.jsonl: line 3: field 'chosen': the key appears twice in one object; JSON keeps only its \
last value, so reading it would drop the other: give each key once
    >>> parse_json('{"chosen": "a \\\\ud800"}', "x.jsonl", line=1)
    Traceback (most recent call last):
    ...
    legend.errors.DataError: x.jsonl: line 1: field 'chosen': a lone surrogate \\ud800 (half of a UTF-16 pair, escaped \
in the JSON) is not text: UTF-8 cannot hold it; write the whole pair or remove it
    """
    try:
        value = json.loads(text, object_pairs_hook=_object_once)
    except _RepeatedKey as err:
        raise DataError(
            "the key appears twice in one object; JSON keeps only its last value, so reading it would drop the "
            "other: give each key once",
            source=source,
            line=line,
            row=row,
            field=err.key,
        ) from None
    if _SURROGATE_ESCAPE.search(text):
        found = _lone_surrogate(value)
        if found is not None:
            field, code = found
            raise DataError(
                f"a lone surrogate {code} (half of a UTF-16 pair, escaped in the JSON) is not text: UTF-8 cannot hold "
                "it; write the whole pair or remove it",
                source=source,
                line=line,
                row=row,
                field=field or None,
            )
    return value


def json_list_records(text: str, source: str) -> Iterator[Any]:
    """The elements of a JSON list document one by one (each checked by `parse_json`, naming its row).

    Args:
        text: the document, starting with "[".
        source: the file, for errors.

    Returns:
        An iterator over the elements.
    """
    decoder = json.JSONDecoder(object_pairs_hook=_object_once)
    whitespace = re.compile(r"[ \t\r\n]*")
    index = whitespace.match(text, 1).end()  # type: ignore[union-attr]
    row = 0
    if text[index : index + 1] == "]":
        return
    while True:
        row += 1
        start = index
        try:
            _, index = decoder.raw_decode(text, index)
        except _RepeatedKey:
            index = start
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON: {exc.msg} (column {exc.colno})", source=source, line=exc.lineno) from None
        if start == index:  # a repeated key: find where the element ends, then report it with its row
            _, index = json.JSONDecoder().raw_decode(text, start)
        yield parse_json(text[start:index], source, row=row)
        index = whitespace.match(text, index).end()  # type: ignore[union-attr]
        if text[index : index + 1] == ",":
            index = whitespace.match(text, index + 1).end()  # type: ignore[union-attr]
            continue
        return


def json_records(path: Path, name: str) -> Iterator[Any]:
    """The records of a JSON Lines file (or a .json list of records) exactly as `json.loads` reads them.

    Each is checked by `parse_json`: a key repeated in one object, or a lone surrogate escape, is a
    DataError naming the line (JSON Lines) or row (a list).

    Args:
        path: a .jsonl/.json file, possibly .gz-compressed.
        name: how the file is named in errors.

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
                yield from json_list_records(head + handle.read(), name)
                return
    with open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8").strip().lstrip("\ufeff")
            if text:
                try:
                    yield parse_json(text, name, line=number)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"malformed JSON: {exc.msg} (column {exc.colno})", source=name, line=number
                    ) from None


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
            elif isinstance(before, float) and isinstance(after, float):
                hint = "the reader changed the number's digits; give this data as .parquet instead"
            else:
                hint = "the column mixes types between rows; give this field one type in every row"
            raise DataError(
                f"{where + ': ' if where else ''}{shown(before)} ({type(before).__name__}) would be read as "
                f"{shown(after)} ({type(after).__name__}) and legend never writes a changed value: {hint}",
                source=source,
                row=row,
                field=field,
            )


JSON_READ_OPTIONS: dict[str, Any] = {"on_mixed_types": None}
"""How legend reads JSON (passed to `datasets`): by pyarrow alone. With its default ("use_json") `datasets` re-encodes
every row of a file whose objects vary in their keys through pandas' ujson, which keeps 10 digits of each float
(0.30000000000000004 -> 0.3); without it a varying object is the union of its keys and every value is exact, and a
column mixing types (text in one row, an object in another) or a NaN literal, which pyarrow cannot read, is read by
datasets' own reader instead (a float it changes is then refused by `check_values_kept`, naming it)."""


def _kind_of(value: Any) -> str:
    return (
        describe(value) if not isinstance(value, (dict, list)) else "an object" if isinstance(value, dict) else "a list"
    )


def mixed_type_error(message: str, path: Path, name: str) -> DataError | None:
    """The row and field behind pyarrow's "Column(/a/b) changed from string to object" (None for another message):
    the first row whose value there is of another kind than the first row's.

    Args:
        message: pyarrow's error text.
        path: the JSON file.
        name: how it is named in the error.

    Returns:
        The DataError to raise, or None.
    """
    match = re.search(r"Column\((/[^)]*)\) changed from (\w+) to (\w+)", message)
    if match is None:
        return None
    keys = [key for key in match.group(1).split("/") if key]
    first: str | None = None
    try:
        for row, record in enumerate(json_records(path, name), start=1):
            value: Any = record
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                continue
            kind = "a string" if isinstance(value, str) else _kind_of(value)
            if first is None:
                first = kind
            elif kind != first:
                return DataError(
                    f"the column mixes types between rows ({kind} here, {first} in an earlier row); legend reads "
                    "JSON exactly and Arrow holds one type per column: give this field one type in every row",
                    source=name,
                    row=row,
                    field=".".join(keys),
                )
    except DataError as err:
        return err
    return DataError(
        f"the column '{'.'.join(keys)}' mixes types between rows ({match.group(2)}, then {match.group(3)}): give it "
        "one type in every row",
        source=name,
    )
