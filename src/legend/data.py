"""Reading preference data: tables, layouts, and the texts of each pair.

Everything that touches user files lives here, so that the rest of the package
only ever sees two things: a `datasets.Dataset` (as read, rows untouched) and a
list of `PairView`s (the prompt / chosen / rejected texts of each row, whatever
the layout of the source). Every problem with the user's data is reported as a
`DataError` whose text is one line naming the file, the row and the field.

Supported preference layouts (see `detect_layout`):

* ``explicit``       string columns ``prompt``, ``chosen``, ``rejected``;
* ``conversational`` TRL chat format: ``chosen``/``rejected`` are lists of
  ``{"role", "content"}`` messages, with an optional ``prompt`` column;
* ``hh``             Anthropic hh-rlhf: ``chosen``/``rejected`` hold the whole
  ``\\n\\nHuman: ... \\n\\nAssistant: ...`` transcript;
* ``pku``            PKU-SafeRLHF: ``prompt``, ``response_0``, ``response_1``,
  ``safer_response_id``;
* ``implicit``       string ``chosen``/``rejected`` sharing a common prefix
  that is the prompt.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets

from .errors import DataError
from .io import quiet_datasets

Message = dict[str, str]
"""One chat message: ``{"role": "user" | "assistant" | "system", "content": str}``."""

Layout = Literal["explicit", "conversational", "hh", "pku", "implicit"]

# Rows are read in batches of this size: far faster than `ds[i]` per row and
# bounded in memory.
_BATCH_ROWS = 4096

# Input file suffixes -> `datasets` packaged builder.
_INPUT_FORMATS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Text formats may also come gzip-compressed (hh-rlhf ships .jsonl.gz).
_COMPRESSED_SUFFIXES = (".gz",)

_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}

# A Hugging Face Hub dataset id: "name" or "namespace/name".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")

# "Goal" before "Behavior": in JailbreakBench, Goal is the request and Behavior a
# short label ("Defamation"); HarmBench has only Behavior (the request).
_QUESTION_COLUMNS = ("question", "goal", "prompt", "instruction", "forbidden_prompt", "Goal", "Behavior", "behavior")
_PKU_COLUMNS = ("response_0", "response_1", "safer_response_id")
_COLUMN_FLAGS = "--prompt-column/--chosen-column/--rejected-column"


@dataclass(frozen=True)
class PairView:
    """The texts of one preference pair, independent of the source layout."""

    prompt: tuple[Message, ...]
    """The conversation before the response (may be empty)."""
    chosen: str
    """The chosen (preferred / safer) assistant response."""
    rejected: str
    """The rejected assistant response."""


@dataclass(frozen=True)
class ContrastPair:
    """A question with one harmful and one harmless answer (direction building)."""

    question: str
    harmful: str
    harmless: str


@dataclass(frozen=True)
class ColumnNames:
    """User overrides of the column names; ``None`` means auto-detect."""

    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None


# --------------------------------------------------------------------------- reading


def load_table(source: str | os.PathLike[str], split: str = "train") -> datasets.Dataset:
    """Read a table through the `datasets` library, rows unchanged.

    ``source`` may be a ``.jsonl``/``.json``/``.parquet``/``.csv`` file (text
    formats may be ``.gz``-compressed; a ``.json`` file may hold a list of
    records or JSON Lines), a folder written by ``Dataset.save_to_disk`` or
    ``DatasetDict.save_to_disk`` (then ``split`` is taken), a folder of data
    files, or - when it is no existing local path - a Hugging Face Hub dataset
    name, loaded with ``datasets.load_dataset(name, split=split)``.

    Local data is loaded fully into memory, with a throw-away cache, so that
    nothing is ever written next to the user's files and no stale cache can be
    returned after the file changes.

    Raises DataError for a missing or unreadable file, an unknown file type,
    malformed JSON (naming the line), a table with no rows, or an unreachable
    / unknown Hub dataset.
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
    if any(lowered.endswith(ext + comp) for ext in _INPUT_FORMATS for comp in ("", *_COMPRESSED_SUFFIXES)):
        return False
    return _HUB_ID.fullmatch(name) is not None


def input_format(path: Path) -> str | None:
    """The `datasets` builder for a file name, or None when unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None  # parquet compresses internally; .parquet.gz is not readable
    return _INPUT_FORMATS.get(suffixes[-1]) if suffixes else None


def _load_file(path: Path, name: str) -> datasets.Dataset:
    builder = input_format(path)
    if builder is None:
        raise DataError(
            f"unknown file type '{''.join(path.suffixes) or path.name}'; expected .jsonl, .json, .parquet or .csv "
            "(.jsonl/.json/.csv may be .gz-compressed), a dataset folder, or a Hugging Face Hub dataset name",
            source=name,
        )
    if not os.access(path, os.R_OK):
        raise DataError("file is not readable (permission denied)", source=name)
    if path.stat().st_size == 0:
        raise DataError("file is empty (no rows)", source=name)
    if builder in ("json", "csv"):
        # Arrow keeps invalid UTF-8 in its strings and fails only when a value is read: look first.
        not_text = find_non_utf8(path, name)
        if not_text is not None:
            raise not_text
    try:
        with quiet_datasets(), tempfile.TemporaryDirectory(prefix="legend-datasets-") as cache:
            data_file = _records_as_json_lines(path, Path(cache)) or path
            # data_files is a glob pattern for `datasets`: escape [, *, ? in names.
            return datasets.load_dataset(
                builder,
                data_files=glob.escape(str(data_file)),
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
            )
    except Exception as exc:
        raise _explain_read_failure(path, name, builder, exc) from exc


def _records_as_json_lines(path: Path, folder: Path) -> Path | None:
    """Copy a .json list of records to JSON Lines in ``folder``; None for other files.

    `datasets` turns a JSON list into JSON Lines through pandas' encoder, which
    keeps 10 decimals of each float (0.12345678901234567 -> 0.123456789);
    converting it ourselves keeps full precision (and datasets' handling of
    mixed-type columns, which a `Dataset.from_list` would lose).
    """
    if not path.name.lower().endswith((".json", ".json.gz")):
        return None
    with _open_text(path) as handle:
        head = handle.read(4096).lstrip("\ufeff \t\r\n")
        if not head.startswith("["):
            return None
        document = json.loads(head + handle.read())
    if not document or not all(isinstance(record, dict) for record in document):
        return None  # empty, or a list of strings: datasets' own reading is right
    lines = folder / "records.jsonl"
    with open(lines, "w", encoding="utf-8") as out:
        for record in document:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return lines


def check_file_split(name: str, split: str) -> None:
    """A single data file is one split, "train" (as `datasets` loads it): another split name is an error, not ignored.

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
            f"{_root_message(exc)}",
            source=name,
        ) from exc


def _load_hub(name: str, split: str) -> datasets.Dataset:
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(
            "no such local file or folder, and the Hugging Face Hub dataset could not be loaded "
            f"(hub unreachable or dataset not found): {_root_message(exc)}",
            source=name,
        ) from exc
    if not isinstance(loaded, datasets.Dataset):  # e.g. an IterableDataset from a custom script
        raise DataError(f"expected a table, got {type(loaded).__name__}", source=name)
    return loaded


def _root_message(exc: BaseException) -> str:
    """First line of the innermost cause: the useful part of a `datasets` error chain."""
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


def _explain_read_failure(path: Path, name: str, builder: str, exc: Exception) -> DataError:
    """Turn a `datasets` read failure into one precise DataError (failure path only)."""
    if isinstance(exc, StopIteration) or "corresponds to no data" in str(exc):
        return DataError("no rows", source=name)
    if builder == "json":
        located = _locate_json_problem(path, name)
        if located is not None:
            return located
    elif builder == "csv":
        located = find_non_utf8(path, name)
        if located is not None:
            return located
    return DataError(f"could not read as {builder}: {_root_message(exc)}", source=name)


def _open_text(path: Path) -> Any:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _locate_json_problem(path: Path, name: str) -> DataError | None:
    """Find the line (JSON Lines) or position (JSON document) that is malformed."""
    not_text = find_non_utf8(path, name)
    if not_text is not None:
        return not_text
    try:
        with _open_text(path) as handle:
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
            return _check_json_document(document, name)
    return _scan_json_lines(text, name)


def _open_binary(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def find_non_utf8(path: Path, name: str) -> DataError | None:
    """The first byte that is not UTF-8, as a DataError naming its line and byte offset; None when all is text.

    For a .gz file the offset counts the uncompressed bytes.
    """
    offset = 0
    try:
        with _open_binary(path) as handle:
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
    """The records of a JSON Lines file (or a .json list of records) exactly as `json.loads` reads them."""
    if path.name.lower().endswith((".json", ".json.gz")):
        with _open_text(path) as handle:
            head = handle.read(4096).lstrip("\ufeff \t\r\n")
            if head.startswith("["):
                yield from json.loads(head + handle.read())
                return
    with _open_binary(path) as handle:
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
    changed value. Raises DataError naming the row and field of the first such value.
    """
    names = ds.column_names
    row = first_row
    for batch in ds.with_format(None).iter(batch_size=_BATCH_ROWS):
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
    """The rows of a CSV file as the texts written in it (header -> cell)."""
    import csv

    with _open_text(path) if path.suffix.lower() == ".gz" else open(path, encoding="utf-8", newline="") as handle:
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
    """Refuse a CSV whose type inference changed a cell ("007" read as 7, "NA" read as null): legend would write
    the changed value. Raises DataError naming the row and field."""
    names = ds.column_names
    row = first_row
    for batch in ds.with_format(None).iter(batch_size=_BATCH_ROWS):
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
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            return DataError(f"malformed JSON: {exc.msg} (column {exc.colno})", source=name, line=number)
        if not isinstance(record, dict):
            return DataError(f"expected a JSON object, got {_describe(record)}", source=name, line=number)
    return None


def _check_json_document(document: Any, name: str) -> DataError | None:
    if not isinstance(document, list):
        return DataError(f"expected a JSON list of records, got {_describe(document)}", source=name)
    for row, record in enumerate(document, start=1):
        if not isinstance(record, dict):
            return DataError(f"expected a JSON object, got {_describe(record)}", source=name, row=row)
    return None


# --------------------------------------------------------------------------- layouts


def detect_layout(
    ds: datasets.Dataset,
    columns: ColumnNames = ColumnNames(),
    *,
    source: str = "<data>",
    transcripts: tuple[int, int] | None = None,
) -> Layout:
    """Recognise the preference layout of ``ds`` (see the module docstring).

    Column names given in ``columns`` take precedence over the usual names.
    When a table has both ``chosen``/``rejected`` and the PKU columns, the
    ``chosen``/``rejected`` columns win. Raises DataError naming ``source``,
    the columns found and the ones expected when nothing fits.

    String ``chosen``/``rejected`` without a prompt are ``hh`` when most rows'
    chosen texts are hh-rlhf transcripts (counted over every row of ``ds``, or
    given as ``transcripts`` = (transcripts, other texts) counted over a whole
    input read in chunks), else ``implicit``; ``pair_views`` then refuses, naming
    it, each row that does not fit the layout chosen.
    """
    found = list(ds.column_names)
    _check_named_columns(columns, found, source)
    prompt, chosen, rejected = _resolve_columns(columns)
    if chosen in found and rejected in found:
        if _column_kind(ds, chosen) == "messages" or _column_kind(ds, rejected) == "messages":
            return "conversational"
        if prompt in found:
            return "explicit"
        hh, other = transcripts if transcripts is not None else count_transcripts(ds, chosen)
        return "hh" if hh > 0 and hh >= other else "implicit"
    if (
        prompt in found
        and all(c in found for c in _PKU_COLUMNS)
        and columns.chosen is None
        and columns.rejected is None
    ):
        return "pku"
    raise DataError(
        f"cannot recognise the preference layout; columns found: {', '.join(found) or '(none)'}; expected "
        "'prompt', 'chosen', 'rejected' (texts or chat messages), or 'chosen', 'rejected' alone "
        "(hh-rlhf transcripts or texts sharing the prompt), or 'prompt', 'response_0', 'response_1', "
        f"'safer_response_id' (PKU-SafeRLHF); name your columns with {_COLUMN_FLAGS}",
        source=source,
    )


def _check_named_columns(columns: ColumnNames, found: Sequence[str], source: str) -> None:
    for option, column in (("prompt", columns.prompt), ("chosen", columns.chosen), ("rejected", columns.rejected)):
        if column is not None and column not in found:
            raise DataError(
                f"no column '{column}' (given as the {option} column); columns found: {', '.join(found)}",
                source=source,
            )


def _resolve_columns(columns: ColumnNames) -> tuple[str, str, str]:
    return (columns.prompt or "prompt", columns.chosen or "chosen", columns.rejected or "rejected")


def _column_kind(ds: datasets.Dataset, column: str) -> Literal["string", "messages", "other"]:
    """Classify a column from its features, peeking at values only when untyped."""
    feature = ds.features[column]
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return "string"
        if feature.dtype != "null":
            return "other"
    inner = getattr(feature, "feature", None)
    if isinstance(inner, dict):
        return "messages" if {"role", "content"} <= set(inner) else "other"
    # Untyped (e.g. datasets' Json feature for mixed-type columns, or all null): peek.
    for value in ds.select(range(min(ds.num_rows, 100)))[column]:
        if value is None:
            continue
        if isinstance(value, str):
            return "string"
        if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            return "messages"
        return "other"
    return "string"


def _is_transcript(value: Any) -> bool:
    return isinstance(value, str) and _HH_ASSISTANT in value and "Human:" in value


def count_transcripts(ds: datasets.Dataset, column: str) -> tuple[int, int]:
    """(rows of ``column`` holding an hh-rlhf transcript, other string rows), over every row."""
    hh = other = 0
    for batch in ds.select_columns([column]).with_format(None).iter(batch_size=_BATCH_ROWS):
        for value in batch[column]:
            if _is_transcript(value):
                hh += 1
            elif isinstance(value, str):
                other += 1
    return hh, other


def split_hh_transcript(text: str) -> tuple[tuple[Message, ...], str]:
    """Split an hh-rlhf transcript into (prompt messages, final response).

    The split is at the LAST ``"\\n\\nAssistant:"``; the text after it is the
    response (stripped; it may be empty - hh-rlhf has a few such rows). The
    text before it is parsed into messages at each ``"\\n\\nHuman:"`` (user) and
    ``"\\n\\nAssistant:"`` (assistant); contents are stripped. A ``Human:`` that
    is not preceded by a blank line is part of the content, as in the data.
    Text before the first marker, if any, becomes a user message. Consecutive
    turns of the same role are joined (with a blank line) so that the prompt
    alternates; the prompt may still end with an assistant turn when the
    transcript has two assistant turns at its end (3 of 1,101 harmless-base
    test rows).

    Raises DataError (no location; the caller adds row and field) when the
    transcript has no ``"\\n\\nAssistant:"``.
    """
    cut = text.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise DataError(
            "not an hh-rlhf transcript: no '\\n\\nAssistant:' turn (most rows are transcripts: make every row one "
            "layout)"
        )
    response = text[cut + len(_HH_ASSISTANT) :].strip()
    head = text[:cut]
    if not head.startswith("\n\n") and head.lstrip().startswith(("Human:", "Assistant:")):
        head = "\n\n" + head.lstrip()  # tolerate a transcript that starts without the blank line
    pieces = _HH_TURN.split(head)
    # re.split with one group: [before, role, content, role, content, ...]
    turns = [("user", pieces[0].strip())] if pieces[0].strip() else []
    turns += [(_HH_ROLES[role], content.strip()) for role, content in zip(pieces[1::2], pieces[2::2])]
    messages: list[Message] = []
    for role, content in turns:
        if messages and messages[-1]["role"] == role:
            # hh-rlhf has a few repeated turns ("Assistant: ...\n\nAssistant: ...");
            # chat templates want alternating roles, so join them as one message.
            messages[-1] = {"role": role, "content": f"{messages[-1]['content']}\n\n{content}"}
        else:
            messages.append({"role": role, "content": content})
    return tuple(messages), response


def pair_views(
    ds: datasets.Dataset,
    layout: Layout | str,
    columns: ColumnNames = ColumnNames(),
    source: str = "<data>",
) -> list[PairView]:
    """Return one PairView per row of ``ds``, in order; no row is ever dropped.

    Raises DataError naming ``source``, the 1-based row and the field for a
    chosen/rejected value that is missing, not a string (or messages), or
    empty after stripping. Layout specifics:

    * hh: the chosen transcript's prompt is used when the rejected one differs
      (a few hh-rlhf rows); an empty final response is kept (hh-rlhf has some),
      only an empty transcript is an error.
    * conversational: the response is the last message (it must be from the
      assistant); the prompt is the ``prompt`` column's messages (explicit) or
      the chosen messages before the response (implicit), the chosen side
      winning if the rejected side differs. A string ``prompt`` column (as in
      UltraFeedback) is used only when the chosen messages hold no prompt.
    * pku: chosen is ``response_{safer_response_id}``, rejected the other.
    * implicit: the longest common prefix of chosen and rejected, cut back to a
      whitespace boundary, is the prompt (one user message); the rest, stripped,
      are the responses.
    """
    _check_named_columns(columns, ds.column_names, source)
    prompt_col, chosen_col, rejected_col = _resolve_columns(columns)
    if layout == "pku":
        wanted = [prompt_col, *_PKU_COLUMNS]
    elif layout == "explicit" or (layout == "conversational" and prompt_col in ds.column_names):
        wanted = [prompt_col, chosen_col, rejected_col]
    else:
        wanted = [chosen_col, rejected_col]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DataError(
            f"layout '{layout}' needs column(s) {', '.join(missing)}; columns found: {', '.join(ds.column_names)}",
            source=source,
        )
    make_view = _VIEW_MAKERS[layout]
    names = _Names(prompt_col, chosen_col, rejected_col)
    views: list[PairView] = []
    table = ds.select_columns(wanted).with_format(None)  # plain Python values whatever ds's format
    for batch in table.iter(batch_size=_BATCH_ROWS):
        for values in zip(*(batch[c] for c in wanted)):
            row = len(views) + 1
            views.append(make_view(dict(zip(wanted, values)), names, _Where(source, row)))
    return views


@dataclass(frozen=True)
class _Names:
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class _Where:
    source: str
    row: int

    def error(self, field: str, reason: str) -> DataError:
        return DataError(reason, source=self.source, row=self.row, field=field)


def _describe(value: Any) -> str:
    """How a bad value is named in error messages."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    return type(value).__name__


def _text(record: dict[str, Any], field: str, where: _Where, *, allow_empty: bool = False) -> str:
    value = record[field]
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        adjective = "string" if allow_empty else "non-empty string"
        raise where.error(field, f"expected a {adjective}, got {_describe(value)}")
    return value


def _messages(value: Any, field: str, where: _Where) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise where.error(field, f"expected a list of chat messages, got {_describe(value)}")
    messages: list[Message] = []
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise where.error(field, f"message {number}: expected a {{role, content}} object, got {_describe(message)}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise where.error(
                field,
                f"message {number}: expected string 'role' and 'content', got {_describe(role)} and "
                f"{_describe(content)}",
            )
        messages.append({"role": role, "content": content})  # drop extra keys (name, tool_calls, ...)
    return tuple(messages)


def _user_prompt(text: str) -> tuple[Message, ...]:
    return ({"role": "user", "content": text},) if text.strip() else ()


def _explicit_view(record: dict[str, Any], names: _Names, where: _Where) -> PairView:
    prompt = _text(record, names.prompt, where, allow_empty=True)
    return PairView(
        prompt=_user_prompt(prompt),
        chosen=_text(record, names.chosen, where),
        rejected=_text(record, names.rejected, where),
    )


def _hh_split(record: dict[str, Any], field: str, where: _Where) -> tuple[tuple[Message, ...], str]:
    try:
        return split_hh_transcript(_text(record, field, where))
    except DataError as err:
        if err.row is not None:
            raise
        raise where.error(field, err.reason) from None


def _hh_view(record: dict[str, Any], names: _Names, where: _Where) -> PairView:
    prompt, chosen = _hh_split(record, names.chosen, where)
    _, rejected = _hh_split(record, names.rejected, where)  # a differing rejected prompt is ignored
    return PairView(prompt=prompt, chosen=chosen, rejected=rejected)


def _final_response(messages: tuple[Message, ...], field: str, where: _Where) -> str:
    if not messages:
        raise where.error(field, "expected at least one chat message, got an empty list")
    last = messages[-1]
    if last["role"] != "assistant":
        raise where.error(field, f"the last message must be the assistant's response, got role '{last['role']}'")
    if not last["content"].strip():
        raise where.error(field, "the assistant's response is an empty string")
    return last["content"]


def _conversational_view(record: dict[str, Any], names: _Names, where: _Where) -> PairView:
    chosen = _messages(record[names.chosen], names.chosen, where)
    rejected = _messages(record[names.rejected], names.rejected, where)
    chosen_text = _final_response(chosen, names.chosen, where)
    rejected_text = _final_response(rejected, names.rejected, where)
    prompt = chosen[:-1]  # implicit prompt; the chosen side wins if the rejected one differs
    if names.prompt in record:
        given = record[names.prompt]
        if isinstance(given, list):
            prompt = _messages(given, names.prompt, where) + prompt
        elif not prompt:
            # A string prompt (UltraFeedback style) only matters when the
            # chosen messages do not repeat it.
            prompt = _user_prompt(_text(record, names.prompt, where, allow_empty=True))
    return PairView(prompt=prompt, chosen=chosen_text, rejected=rejected_text)


def _pku_view(record: dict[str, Any], names: _Names, where: _Where) -> PairView:
    prompt = _text(record, names.prompt, where, allow_empty=True)
    safer = record["safer_response_id"]
    if isinstance(safer, str) and safer.strip() in ("0", "1"):
        safer = int(safer)
    if isinstance(safer, bool) or safer not in (0, 1):
        raise where.error("safer_response_id", f"expected 0 or 1, got {safer!r}")
    chosen_field, rejected_field = ("response_0", "response_1") if safer == 0 else ("response_1", "response_0")
    return PairView(
        prompt=_user_prompt(prompt),
        chosen=_text(record, chosen_field, where),
        rejected=_text(record, rejected_field, where),
    )


def _common_prompt_length(chosen: str, rejected: str) -> int:
    """Length of the shared prefix of two texts, cut back to a whitespace boundary."""
    length = len(os.path.commonprefix([chosen, rejected]))
    at_boundary = (
        length == 0
        or chosen[length - 1].isspace()
        or (length < len(chosen) and length < len(rejected) and chosen[length].isspace() and rejected[length].isspace())
    )
    if at_boundary:
        return length
    # Do not split a word: "... Sure" vs "... Surely" share "Sure" but it is a response.
    last_space = max((i for i in range(length) if chosen[i].isspace()), default=-1)
    return last_space + 1


def _implicit_view(record: dict[str, Any], names: _Names, where: _Where) -> PairView:
    chosen = _text(record, names.chosen, where)
    if _is_transcript(chosen):
        raise where.error(
            names.chosen,
            "an hh-rlhf transcript, but most rows are not (read as texts sharing a prompt): make every row one layout",
        )
    rejected = _text(record, names.rejected, where)
    cut = _common_prompt_length(chosen, rejected)
    chosen_text, rejected_text = chosen[cut:].strip(), rejected[cut:].strip()
    for field, text in ((names.chosen, chosen_text), (names.rejected, rejected_text)):
        if not text:
            raise where.error(field, "nothing is left after the prompt shared by chosen and rejected")
    return PairView(prompt=_user_prompt(chosen[:cut].strip()), chosen=chosen_text, rejected=rejected_text)


_VIEW_MAKERS: dict[str, Callable[[dict[str, Any], _Names, _Where], PairView]] = {
    "explicit": _explicit_view,
    "conversational": _conversational_view,
    "hh": _hh_view,
    "pku": _pku_view,
    "implicit": _implicit_view,
}


# --------------------------------------------------------------------------- questions and contrast pairs


def read_contrast_pairs(
    source: str | os.PathLike[str],
    question: str = "question",
    harmful: str = "harmful",
    harmless: str = "harmless",
) -> list[ContrastPair]:
    """Read (question, harmful answer, harmless answer) rows from any table ``load_table`` reads.

    Raises DataError naming the missing column(s) and the columns found, or
    the row and field of a value that is not a non-empty string.
    """
    name = os.fspath(source)
    ds = load_table(source)
    wanted = [question, harmful, harmless]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(repr(c) for c in missing)}; columns found: {', '.join(ds.column_names)}",
            source=name,
        )
    pairs: list[ContrastPair] = []
    for batch in ds.select_columns(wanted).with_format(None).iter(batch_size=_BATCH_ROWS):
        for values in zip(*(batch[c] for c in wanted)):
            record, where = dict(zip(wanted, values)), _Where(name, len(pairs) + 1)
            pairs.append(ContrastPair(*(_text(record, c, where) for c in wanted)))
    return pairs


def read_questions(source: str | os.PathLike[str], column: str | None = None) -> list[str]:
    """Read a list of questions (harmful behaviours, instructions, ...), stripped.

    Accepts any table ``load_table`` reads - the column is ``column`` or the
    first found of ``question``, ``goal`` (AdvBench), ``prompt``,
    ``instruction``, ``forbidden_prompt`` (StrongREJECT), ``Goal``
    (JailbreakBench), ``Behavior`` (HarmBench), ``behavior`` - and a JSON list
    of plain strings (TDC 2023).
    """
    name = os.fspath(source)
    strings = _json_string_list(Path(name).expanduser())
    if strings is not None:
        for row, item in enumerate(strings, start=1):
            if not isinstance(item, str) or not item.strip():
                raise DataError(f"expected a non-empty string, got {_describe(item)}", source=name, row=row)
        return [item.strip() for item in strings]
    ds = load_table(source)
    if column is None:
        column = next((c for c in _QUESTION_COLUMNS if c in ds.column_names), None)
        if column is None:
            raise DataError(
                f"no question column; columns found: {', '.join(ds.column_names)}; expected one of "
                f"{', '.join(_QUESTION_COLUMNS)} (or name the column explicitly)",
                source=name,
            )
    elif column not in ds.column_names:
        raise DataError(f"no column '{column}'; columns found: {', '.join(ds.column_names)}", source=name)
    questions: list[str] = []
    for batch in ds.select_columns([column]).with_format(None).iter(batch_size=_BATCH_ROWS):
        for value in batch[column]:
            where = _Where(name, len(questions) + 1)
            questions.append(_text({column: value}, column, where).strip())
    return questions


def _json_string_list(path: Path) -> list[Any] | None:
    """The items of a .json file holding a list of plain strings, else None."""
    # `datasets` would turn such a list into a column named "text"; reading it
    # directly keeps the intent (and the row numbers) obvious.
    if not path.is_file() or not path.name.lower().endswith((".json", ".json.gz")):
        return None
    try:
        with _open_text(path) as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None  # let load_table produce the precise error
    if isinstance(document, list) and document and not any(isinstance(item, dict) for item in document):
        return document
    return None


# --------------------------------------------------------------------------- reading in chunks

DEFAULT_CHUNK_ROWS = 4096


def streamable_format(path: Path) -> str | None:
    """The `datasets` streaming builder for a local file that can be read in chunks, else None.

    A `.json` file may hold one JSON list, which cannot be streamed; `load_table` reads it whole.

    >>> streamable_format(Path("missing.jsonl")) is None  # only existing files stream
    True
    """
    builder = input_format(path)
    if builder is None or not path.is_file():
        return None
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in _COMPRESSED_SUFFIXES]
    return None if suffixes and suffixes[-1] == ".json" else builder


def iter_chunks(
    data: str | os.PathLike[str],
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    *,
    split: str = "train",
    limit: int | None = None,
    check_values: bool = True,
) -> Iterator[datasets.Dataset]:
    """Yield the rows of `data` in order as Datasets of at most `chunk_rows` rows (at most `limit` rows in all).

    Streamed files never hold more than a chunk (plus the reader's block) in memory.
    Raises DataError (from `load_table`'s checks) for unreadable, malformed or empty input, and, with
    `check_values`, for a value the reading changed (see `check_values_kept`; a later pass over an
    input already checked by `scan_input` may skip it).
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
    chunk: datasets.Dataset, layout: str, columns: ColumnNames, source: str, first_row: int
) -> list[PairView]:
    """pair_views of one chunk; a DataError names the row in the whole file, not in the chunk."""
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
    """Read every row of `data` (no model) and check it: the layout (decided over all rows, not a sample),
    the pair texts of each row, values read back unchanged, and with `one_schema` (a Parquet output) column
    types that stay castable to the first chunk's. Raises the DataError naming the first bad row.

    The same chunks as `iter_chunks`, so the result does not depend on `chunk_rows`.
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
                    f"the column types change from the first rows ({_root_message(exc)}); a Parquet output needs "
                    "one type per column: write .jsonl instead",
                    source=source,
                    row=rows + 1,
                ) from exc
        if layout == "implicit":  # hh or implicit: decided once every row is counted
            chosen = columns.chosen or "chosen"
            counted = count_transcripts(chunk, chosen)
            hh, other = hh + counted[0], other + counted[1]
        else:
            chunk_views(chunk, layout or "explicit", columns, source, rows)
        rows += len(chunk)
        chunks += 1
    assert first is not None and layout is not None  # iter_chunks raises on an input without rows
    if layout == "implicit":
        layout = detect_layout(first, columns, source=source, transcripts=(hh, other))
        done = 0
        for chunk in iter_chunks(data, chunk_rows, split=split, limit=limit, check_values=False):
            chunk_views(chunk, layout, columns, source, done)
            done += len(chunk)
    return InputScan(layout=layout, rows=rows, chunks=chunks)
