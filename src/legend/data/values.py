"""The raw text of an input file and how its values are named: opening it (gzip or not), the first byte that is not
UTF-8 (`find_non_utf8`, found before Arrow would fail on it), how a bad value is named in errors (`describe`,
`shown`), and the batch size rows are read in.

The exactness checks built on it: `json_values` (a JSON file's own records, and the check that reading kept
every value and its type) and `csv_values` (a CSV file's cell texts, and the check that type inference changed
none).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

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


def shown(value: Any) -> str:
    """A value as JSON text for an error message, cut to about 40 characters.

    >>> shown("x" * 50)
    '"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'
    """
    text = json.dumps(value, ensure_ascii=False, default=str)
    return (text[:40] + "...") if len(text) > 43 else text
