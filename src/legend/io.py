"""Writing results: the one home of atomic writing (files, folders, record tables, JSON).

Every file legend produces appears only when complete: it is written to a temporary name in the
same folder and renamed over the target (`atomic_path`), or built as a temporary folder renamed
into place (`atomic_folder`). On any failure nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import datasets
import numpy as np

from .errors import DataError

OUTPUT_FORMATS = (".jsonl", ".json", ".parquet", ".csv")
_BATCH_ROWS = 4096


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


def json_default(value: Any) -> Any:
    """JSON form of the few non-JSON types our results may contain.

    >>> import numpy as np
    >>> json.dumps({"x": np.float32(0.5), "p": Path("a/b")}, default=json_default)
    '{"x": 0.5, "p": "a/b"}'
    """
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


TEMP_SUFFIX = ".tmp"


def temporary_name(target: Path) -> Path:
    """The temporary sibling `atomic_path` writes first: `.<name>.<12 hex>.tmp` (see `leftover_temporaries`)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def leftover_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Temporary files an interrupted `atomic_path` write of `target` left beside it."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    prefix = f".{target.name}."
    return sorted(
        p
        for p in target.parent.iterdir()
        if p.name.startswith(prefix) and p.name.endswith(TEMP_SUFFIX) and len(p.name) == len(prefix) + 16
    )


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success.

    The writer creates the file itself, so it gets the usual permissions (not mkstemp's 0600).
    Same folder, so `os.replace` is an atomic rename.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(target)
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_leftovers(targets: list[Path] | list[str | os.PathLike[str]]) -> list[Path]:
    """Delete the temporaries an interrupted write of each target left beside it; returns what was removed.

    Call it only while holding the target's `output_lock`: another writer's live temporary has the same form.
    """
    removed = []
    for target in targets:
        for leftover in leftover_temporaries(target):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


LOCK_SUFFIX = ".lock"


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of a target: `.<name>.lock` beside it.

    >>> lock_path("runs/train.jsonl").name
    '.train.jsonl.lock'
    """
    target = Path(target)
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold `lock_path(target)` (created with O_CREAT|O_EXCL, holding our pid) while the body writes `target`.

    A second writer of the same target gets a DataError ("another run is writing this output"); the lock of a
    process that no longer exists (killed) is taken over. The lock file is removed when the body ends.
    """
    lock = lock_path(target)
    created = [] if lock.parent.exists() else [lock.parent]  # removed again if the run leaves it empty
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                owner = -1  # being written this instant, or garbage
            if owner == -1 or _pid_alive(owner):
                if owner == -1 and _attempt < 2:
                    continue
                raise DataError(
                    f"another run is writing this output (process {owner}, lock file {lock}); wait for it, or "
                    "delete the lock file if no such run exists",
                    source=str(target),
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        break
    else:
        raise DataError(f"could not take the lock file {lock}", source=str(target))
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_outputs_spare_inputs(
    outputs: Sequence[str | os.PathLike[str] | None],
    inputs: Sequence[str | os.PathLike[str] | None],
    *,
    folders: bool = False,
) -> None:
    """Refuse outputs that would overwrite, delete or change an input; raises a DataError naming both.

    A file output (`folders=False`) must not be an input file (whatever the spelling: symlinks, `..`),
    lie inside an input folder, or be an existing folder. A folder output (`folders=True`, written by
    `atomic_folder`, which replaces the folder) must not be or hold an input, lie inside an input
    folder, or be an existing file. Inputs that are not local paths (Hub names) and None entries are
    skipped, so a command can pass every argument that may name a file.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "pairs.jsonl").write_text("{}")
    2
    >>> check_outputs_spare_inputs([folder], [folder / "pairs.jsonl"], folders=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    legend.errors.DataError: ...: holds the input .../pairs.jsonl: writing this folder would delete that input; ...
    >>> check_outputs_spare_inputs([folder / "direction"], [folder / "pairs.jsonl", "user/hub-model"], folders=True)
    """
    for out in outputs:
        if out is None:
            continue
        output = Path(out).expanduser()
        if folders and output.exists() and not output.is_dir():
            raise DataError("is a file; name a folder for this output", source=str(output))
        if not folders and output.is_dir():
            raise DataError("is a folder; name an output file", source=str(output))
        for entry in inputs:
            if entry is None:
                continue
            given = Path(entry).expanduser()
            if not given.exists():
                continue
            if folders and (_same_path(output, given) or given.resolve().is_relative_to(output.resolve())):
                raise DataError(
                    f"holds the input {given}: writing this folder would delete that input; name another output folder",
                    source=str(output),
                )
            if given.is_dir():
                if output.resolve().is_relative_to(given.resolve()):
                    raise DataError(
                        f"is inside the input folder {given}: writing it would change that input; "
                        "write it somewhere else",
                        source=str(output),
                    )
            elif _same_path(output, given):
                raise DataError(
                    f"is the input {given}: writing it would destroy that input; name another output file",
                    source=str(output),
                )


def write_bytes_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(handle)`` on a binary temporary file and rename it to ``path`` when it returns."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        write(handle)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it becomes ``target``.

    An existing ``target`` is replaced, or, with ``replace=False``, kept (another process finished
    first) and the new folder dropped. On any error the temporary folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield temporary
        if target.exists() and not replace:
            shutil.rmtree(temporary)
            return
        if target.exists():
            shutil.rmtree(target)
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` as pretty, UTF-8 JSON, atomically.

    NumPy scalars and arrays (anything with ``tolist``), paths and dates are
    converted; other non-JSON values raise TypeError, leaving no output.
    """
    with atomic_path(Path(path)) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2, default=json_default)
        handle.write("\n")


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


class ChunkWriter:
    """Append Datasets to a .jsonl/.json/.parquet/.csv file; the file appears at `path` only when closed cleanly.

    JSON is written by us, not `Dataset.to_json`: pandas writes floats with 10 digits and escapes
    "/". Unicode is written as is and floats keep full precision.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.suffix = check_output_type(path)
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._handle: IO[str] | None = None
        self._parquet: Any = None
        self._first = True
        self._temporary = self.path

    def __enter__(self) -> ChunkWriter:
        self._temporary = self._stack.enter_context(atomic_path(self.path))
        if self.suffix != ".parquet":
            self._handle = self._stack.enter_context(open(self._temporary, "w", encoding="utf-8", newline="\n"))
            if self.suffix == ".json":
                self._handle.write("[")
        return self

    def write(self, chunk: datasets.Dataset) -> None:
        if self.suffix == ".parquet":
            self._write_parquet(chunk)
        elif self.suffix == ".csv":
            self._write_csv(chunk)
        else:
            self._write_json(chunk)
        self.rows += len(chunk)

    def _text(self) -> IO[str]:
        assert self._handle is not None, "ChunkWriter used outside its `with` block"
        return self._handle

    def _write_json(self, chunk: datasets.Dataset) -> None:
        names = chunk.column_names
        handle = self._text()
        for batch in chunk.with_format(None).iter(batch_size=_BATCH_ROWS):
            for values in zip(*(batch[c] for c in names)):
                line = json.dumps(dict(zip(names, values)), ensure_ascii=False, default=json_default)
                if self.suffix == ".json":
                    handle.write(("\n" if self._first else ",\n") + line)
                    self._first = False
                else:
                    handle.write(line + "\n")

    def _write_parquet(self, chunk: datasets.Dataset) -> None:
        import pyarrow.parquet as pq

        table = chunk.with_format("arrow")[:]
        if self._parquet is None:
            self._parquet = self._stack.enter_context(pq.ParquetWriter(str(self._temporary), table.schema))
        elif table.schema != self._parquet.schema:
            try:
                table = table.cast(self._parquet.schema)
            except Exception as exc:  # any arrow cast failure is the same user problem
                raise DataError(
                    f"row {self.rows + 1}: the column types change from the first rows ({exc}); write .jsonl instead",
                    source=str(self.path),
                ) from exc
        self._parquet.write_table(table)

    def _write_csv(self, chunk: datasets.Dataset) -> None:
        nested = nested_columns(chunk.features)
        if nested:
            raise DataError(
                f"CSV cannot hold nested column(s) {', '.join(nested)}; write .jsonl, .json or .parquet instead",
                source=str(self.path),
            )
        chunk.to_pandas().to_csv(self._text(), header=self.rows == 0, index=False)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is None and self.suffix == ".json":
            self._text().write("]\n" if self.rows == 0 else "\n]\n")
        self._stack.__exit__(kind, error, traceback)


def write_table(ds: datasets.Dataset, path: str | os.PathLike[str]) -> None:
    """Write ``ds`` atomically; the format follows the extension.

    ``.jsonl`` (one JSON object per line), ``.json`` (a JSON list of records),
    ``.parquet`` or ``.csv``. Nested columns (chat messages) round-trip in jsonl/json/parquet;
    CSV cannot hold them and is refused before anything is written. Parent folders are created.
    """
    suffix = check_output_type(path)
    if suffix == ".csv" and nested_columns(ds.features):
        raise DataError(
            f"CSV cannot hold nested column(s) {', '.join(nested_columns(ds.features))}; write .jsonl, "
            ".json or .parquet instead",
            source=str(path),
        )
    with quiet_datasets(), ChunkWriter(path) as writer:
        writer.write(ds)


# ---------------------------------------------------------------- safetensors, byte for byte reproducible

_SAFETENSORS_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "int64": "I64", "int32": "I32"}


def safetensors_header(
    tensors: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> bytes:
    """The header of a safetensors file holding `tensors` (name -> (numpy dtype name, shape)) in the given order.

    Keys are written sorted and the data starts 8-byte aligned, so the same tensors and metadata always give
    the same bytes (safetensors' own writer orders metadata by a randomly seeded hash map).

    >>> len(safetensors_header({"v": ("float32", (2,))}, {"name": "x"})) % 8
    0
    """
    entries: dict[str, Any] = {"__metadata__": dict(sorted((metadata or {}).items()))}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        entries[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors(
    path: str | os.PathLike[str], arrays: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Write numpy arrays (or CPU tensors) as a safetensors file, atomically and reproducibly (`safetensors_header`).

    >>> import tempfile
    >>> from safetensors.numpy import load_file
    >>> path = Path(tempfile.mkdtemp()) / "t.safetensors"
    >>> write_safetensors(path, {"v": np.arange(3, dtype=np.float32)}, {"name": "x"})
    >>> load_file(str(path))["v"].tolist()
    [0.0, 1.0, 2.0]
    """
    values = {name: np.ascontiguousarray(np.asarray(array)) for name, array in arrays.items()}
    header = safetensors_header({name: (str(a.dtype), a.shape) for name, a in values.items()}, metadata)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(header)
        for array in values.values():
            handle.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
