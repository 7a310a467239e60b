"""Reading a table: a local file, a dataset folder or a Hub dataset, rows unchanged, failures in one line.

Local data is loaded fully into memory with a throw-away cache, so nothing is ever written next to
the user's files and no stale cache is returned after a file changes. A read failure of `datasets`
is explained as one `DataError` naming the file and, where it can be found, the line.
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import datasets

from ..errors import DataError
from ..io import quiet_datasets
from .csv_values import CSV_READ_OPTIONS, check_csv_header, check_csv_values_kept, csv_records
from .json_values import (
    JSON_READ_OPTIONS,
    check_values_kept,
    json_list_records,
    json_records,
    mixed_type_error,
    parse_json,
)
from .values import describe, find_non_utf8, open_text

# Input file suffixes -> `datasets` packaged builder.
INPUT_FORMATS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Text formats may also come gzip-compressed (hh-rlhf ships .jsonl.gz).
COMPRESSED_SUFFIXES = (".gz",)

# A Hugging Face Hub dataset id: "name" or "namespace/name".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def load_table(source: str | os.PathLike[str], split: str = "train") -> datasets.Dataset:
    """Read a table through the `datasets` library, rows unchanged.

    Args:
        source: a ``.jsonl``/``.json``/``.parquet``/``.csv`` file (text formats may be
            ``.gz``-compressed; a ``.json`` file may hold a list of records or JSON Lines), a folder
            written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``, a folder of data
            files, or, when it is no existing local path, a Hugging Face Hub dataset name.
        split: the split of a DatasetDict folder or a Hub dataset; a single file holds only "train".

    Returns:
        The rows as a `datasets.Dataset`, in memory.

    Raises:
        DataError: a missing or unreadable file, an unknown file type, malformed JSON (naming the
            line), a value the reading would change, a table with no rows, or an unreachable /
            unknown Hub dataset.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "prefs.jsonl"
    >>> _ = path.write_text('{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}\\n')
    >>> load_table(path).column_names
    ['prompt', 'chosen', 'rejected']
    """
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_dir():
        ds = _load_folder(path, name, split)
    elif path.exists():
        check_file_split(name, split)
        ds = _load_file(path, name)
    elif _looks_like_hub_id(name):
        ds = _load_hub(name, split)
    else:
        raise DataError("no such file", source=name)
    if ds.num_rows == 0:
        raise DataError("no rows", source=name)
    if path.is_file() and input_format(path) == "json":
        check_values_kept(ds, json_records(path, name), name)
    elif path.is_file() and input_format(path) == "csv":
        check_csv_values_kept(ds, csv_records(path), name)
    return ds


def _looks_like_hub_id(name: str) -> bool:
    # "data/pairs.jsonl" matches the id pattern too, but a missing file is the
    # likelier meaning when the name ends like a data file.
    lowered = name.lower()
    if any(lowered.endswith(ext + comp) for ext in INPUT_FORMATS for comp in ("", *COMPRESSED_SUFFIXES)):
        return False
    return _HUB_ID.fullmatch(name) is not None


def input_format(path: Path) -> str | None:
    """The `datasets` builder for a file name.

    Args:
        path: a file name (it need not exist).

    Returns:
        "json", "csv" or "parquet", or None for an unknown type.

    >>> input_format(Path("hh.jsonl.gz")), input_format(Path("x.parquet")), input_format(Path("x.parquet.gz"))
    ('json', 'parquet', None)
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None  # parquet compresses internally; .parquet.gz is not readable
    return INPUT_FORMATS.get(suffixes[-1]) if suffixes else None


def streamable_format(path: Path) -> str | None:
    """The `datasets` streaming builder for a local file that can be read in chunks.

    A `.json` file may hold one JSON list, which cannot be streamed; `load_table` reads it whole.

    Args:
        path: a local file.

    Returns:
        The builder name, or None when the file does not exist or cannot be streamed.

    >>> streamable_format(Path("missing.jsonl")) is None  # only existing files stream
    True
    """
    builder = input_format(path)
    if builder is None or not path.is_file():
        return None
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in COMPRESSED_SUFFIXES]
    return None if suffixes and suffixes[-1] == ".json" else builder


def check_file_split(name: str, split: str) -> None:
    """A single data file is one split, "train" (as `datasets` loads it): another split name is an error.

    Args:
        name: the file, for the error.
        split: the split asked for.

    Raises:
        DataError: for any split but "train".

    >>> check_file_split("prefs.jsonl", "train")
    >>> check_file_split("prefs.jsonl", "test")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    legend.errors.DataError: prefs.jsonl: no split 'test': a single file holds one split, 'train' ...
    """
    if split != "train":
        raise DataError(
            f"no split '{split}': a single file holds one split, 'train' (splits come from a dataset folder or a "
            "Hub dataset)",
            source=name,
        )


def check_regular_file(path: Path, name: str) -> None:
    """Refuse an input that is not a regular file (a named pipe, a device, a socket): it cannot be read twice.

    Args:
        path: the input (it exists).
        name: how it is named in the error.

    Raises:
        DataError: naming what it is.
    """
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return
    kind = (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise DataError(
        f"is {kind}, not a regular file: legend reads an input more than once (every row is checked before the "
        "model loads, then annotated), which a stream cannot give; save it to a file first",
        source=name,
    )


def parquet_rows(path: Path, name: str) -> int:
    """The rows a Parquet file holds, from its footer (a damaged file is a DataError naming it)."""
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception as exc:  # pyarrow's ArrowInvalid/OSError for a file that is not Parquet
        raise DataError(f"could not read as parquet: {root_message(exc)}", source=name) from exc


def _load_file(path: Path, name: str) -> datasets.Dataset:
    builder = input_format(path)
    if builder is None:
        raise DataError(
            f"unknown file type '{''.join(path.suffixes) or path.name}'; expected .jsonl, .json, .parquet or .csv "
            "(.jsonl/.json/.csv may be .gz-compressed), a dataset folder, or a Hugging Face Hub dataset name",
            source=name,
        )
    check_regular_file(path, name)
    if not os.access(path, os.R_OK):
        raise DataError("file is not readable (permission denied)", source=name)
    if path.stat().st_size == 0:
        raise DataError("file is empty (no rows)", source=name)
    if builder == "parquet" and parquet_rows(path, name) == 0:
        raise DataError("no rows (the Parquet file has its columns but 0 rows)", source=name)
    if builder in ("json", "csv"):
        # Arrow keeps invalid UTF-8 in its strings and fails only when a value is read: look first.
        not_text = find_non_utf8(path, name)
        if not_text is not None:
            raise not_text
    if builder == "csv":
        check_csv_header(path, name, unnamed=True)  # a table read whole; annotate's streamed reading refuses it
    # JSON: pyarrow's exact reading first, then (a column mixing types, NaN) datasets' own; see JSON_READ_OPTIONS.
    attempts = [CSV_READ_OPTIONS] if builder == "csv" else [JSON_READ_OPTIONS, {}] if builder == "json" else [{}]
    for attempt, options in enumerate(attempts):
        try:
            with quiet_datasets(), tempfile.TemporaryDirectory(prefix="legend-datasets-") as cache:
                data_file = _records_as_json_lines(path, Path(cache), name) or path
                # data_files is a glob pattern for `datasets`: escape [, *, ? in names.
                return datasets.load_dataset(
                    builder,
                    data_files=glob.escape(str(data_file)),
                    split="train",
                    cache_dir=cache,
                    keep_in_memory=True,
                    **options,
                )
        except DataError:
            raise
        except Exception as exc:
            if attempt + 1 < len(attempts):  # a column mixing types, a NaN literal: datasets' own reader
                continue
            raise _explain_read_failure(path, name, builder, exc) from exc
    raise AssertionError("unreachable")


def _records_as_json_lines(path: Path, folder: Path, name: str) -> Path | None:
    """Copy a .json list of records to JSON Lines in ``folder``; None for other files.

    `datasets` turns a JSON list into JSON Lines through pandas' encoder, which
    keeps 10 decimals of each float (0.12345678901234567 -> 0.123456789);
    converting it ourselves keeps full precision (and datasets' handling of
    mixed-type columns, which a `Dataset.from_list` would lose).
    """
    if not path.name.lower().endswith((".json", ".json.gz")):
        return None
    with open_text(path) as handle:
        head = handle.read(4096).lstrip("\ufeff \t\r\n")
        if not head.startswith("["):
            return None
        text = head + handle.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return None  # datasets fails on it too, and the failure is then explained by line
    if isinstance(document, list) and all(isinstance(record, dict) for record in document):
        document = list(json_list_records(text, name))  # a repeated key or a lone surrogate: named by row
    if not document or not all(isinstance(record, dict) for record in document):
        return None  # empty, or a list of strings: datasets' own reading is right
    lines = folder / "records.jsonl"
    with open(lines, "w", encoding="utf-8") as out:
        for record in document:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return lines


def _load_folder(path: Path, name: str, split: str) -> datasets.Dataset:
    try:
        if (path / "dataset_dict.json").is_file():
            # keep_in_memory: a later `.map()` must not write cache files into the user's folder.
            loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
            if split not in loaded:
                raise DataError(f"no split '{split}'; splits found: {', '.join(loaded)}", source=name)
            return loaded[split]
        if (path / "state.json").is_file():
            return datasets.load_from_disk(str(path), keep_in_memory=True)
        # A plain folder of data files: let `datasets` infer the format.
        with quiet_datasets(), tempfile.TemporaryDirectory(prefix="legend-datasets-") as cache:
            return datasets.load_dataset(str(path), split=split, cache_dir=cache, keep_in_memory=True)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"could not read the folder as a dataset (from save_to_disk, or a folder of data files): "
            f"{root_message(exc)}",
            source=name,
        ) from exc


def _load_hub(name: str, split: str) -> datasets.Dataset:
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(
            "no such local file or folder, and the Hugging Face Hub dataset could not be loaded "
            f"(hub unreachable or dataset not found): {root_message(exc)}",
            source=name,
        ) from exc
    if not isinstance(loaded, datasets.Dataset):  # e.g. an IterableDataset from a custom script
        raise DataError(f"expected a table, got {type(loaded).__name__}", source=name)
    return loaded


def root_message(exc: BaseException) -> str:
    """First line of the innermost cause: the useful part of a `datasets` error chain.

    Args:
        exc: the exception raised (its ``__cause__``/``__context__`` chain is followed).

    Returns:
        One line of text.

    >>> try:
    ...     try:
    ...         raise KeyError("the real reason")
    ...     except KeyError as inner:
    ...         raise RuntimeError("wrapper") from inner
    ... except RuntimeError as outer:
    ...     root_message(outer)
    "'the real reason'"
    """
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    for candidate in reversed(seen):
        text = str(candidate).strip()
        if text:
            return text.splitlines()[0]
    return type(exc).__name__


# --------------------------------------------------------------------------- explaining a failed read


def _explain_read_failure(path: Path, name: str, builder: str, exc: Exception) -> DataError:
    """Turn a `datasets` read failure into one precise DataError (failure path only)."""
    if isinstance(exc, StopIteration) or "corresponds to no data" in str(exc):
        return DataError("no rows", source=name)
    if builder == "json":
        located = _locate_json_problem(path, name) or mixed_type_error(root_message(exc), path, name)
        if located is not None:
            return located
    elif builder == "csv":
        located = find_non_utf8(path, name)
        if located is not None:
            return located
    return DataError(f"could not read as {builder}: {root_message(exc)}", source=name)


def _locate_json_problem(path: Path, name: str) -> DataError | None:
    """Find the line (JSON Lines) or position (JSON document) that is malformed."""
    not_text = find_non_utf8(path, name)
    if not_text is not None:
        return not_text
    try:
        with open_text(path) as handle:
            text = handle.read()
    except OSError as exc:
        return DataError(f"could not read: {exc}", source=name)
    if path.name.lower().endswith((".json", ".json.gz")):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            if not _first_line_is_object(text):
                return DataError(f"malformed JSON: {exc.msg} (column {exc.colno})", source=name, line=exc.lineno)
            # Otherwise it is JSON Lines stored under a .json name: scan it by line.
        else:
            return _check_json_document(document, name, text)
    return _scan_json_lines(text, name)


def _first_line_is_object(text: str) -> bool:
    for line in text.splitlines():
        if line.strip():
            try:
                return isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                return False
    return False


def _scan_json_lines(text: str, name: str) -> DataError | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = parse_json(line.strip().lstrip("\ufeff"), name, line=number)
        except json.JSONDecodeError as exc:
            return DataError(f"malformed JSON: {exc.msg} (column {exc.colno})", source=name, line=number)
        except DataError as err:  # a repeated key or a lone surrogate: the real cause of a reader's "trailing data"
            return err
        if not isinstance(record, dict):
            return DataError(f"expected a JSON object, got {describe(record)}", source=name, line=number)
    return None


def _check_json_document(document: Any, name: str, text: str = "") -> DataError | None:
    if not isinstance(document, list):
        return DataError(f"expected a JSON list of records, got {describe(document)}", source=name)
    for row, record in enumerate(document, start=1):
        if not isinstance(record, dict):
            return DataError(f"expected a JSON object, got {describe(record)}", source=name, row=row)
    try:
        for _ in json_list_records(text.lstrip("\ufeff \t\r\n"), name):
            pass
    except DataError as err:
        return err
    return None
