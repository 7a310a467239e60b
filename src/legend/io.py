"""Writing results: the one home of atomic writing (files, folders, record tables, JSON).

Every file legend produces appears only when complete: it is written to a temporary name in the
same folder and renamed over the target (`atomic_path`), or built as a temporary folder renamed
into place (`atomic_folder`). On any failure nothing is left behind: not the temporary, and not a
parent folder the write created. What appears gets the permissions the umask gives a new file or
folder (0644/0755 under umask 022), whatever the temporary-file API created (mkdtemp makes 0700,
safetensors 0600); a file that replaces an existing one keeps that file's permissions. An OS error
(a full disk, a read-only folder) names the target, not the temporary.

Shared state is guarded here too: `output_lock` (one writer of an output, released on SIGTERM/SIGHUP
as on an exception) and `file_lock` (a short read-modify-write of a shared file such as a dataset card).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import struct
import tempfile
import threading
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


# ---------------------------------------------------------------- permissions, created folders, OS errors


def current_umask() -> int:
    """The process umask, read without changing it where /proc tells it (os.umask alone must set it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(executable: bool = False) -> int:
    """The mode a new file (0o666, or 0o777 when executable) or folder (`executable=True`) gets under the umask.

    >>> oct(new_file_mode()) if current_umask() == 0o022 else '0o644'
    '0o644'
    """
    return (0o777 if executable else 0o666) & ~current_umask()


def give_usual_permissions(path: Path) -> None:
    """Give `path` (a file, or a folder and everything in it) the modes the umask gives new ones.

    Temporary-file APIs create private files (mkdtemp 0700, safetensors and mkstemp 0600); what legend
    publishes must look like any other file the user creates. Executable files stay executable.
    """
    if path.is_symlink():
        return
    if path.is_dir():
        os.chmod(path, new_file_mode(executable=True))
        for root, folders, files in os.walk(path):
            for name in folders:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), new_file_mode(executable=True))
            for name in files:
                file = os.path.join(root, name)
                if not os.path.islink(file):
                    os.chmod(file, new_file_mode(executable=bool(os.stat(file).st_mode & 0o111)))
    elif path.exists():
        os.chmod(path, new_file_mode(executable=bool(path.stat().st_mode & 0o111)))


def make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing ancestors; returns the folders created, deepest first.

    Hand the list to `remove_empty_folders` when the write they were made for fails, so a failed
    `--out new1/new2/o.jsonl` leaves no `new1/new2` behind.
    """
    missing: list[Path] = []
    current = Path(folder)
    while not os.path.lexists(current) and current.parent != current:
        missing.append(current)
        current = current.parent
    if os.path.lexists(current) and not current.is_dir():
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(current))
    Path(folder).mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove each folder (deepest first) that is empty; a folder something was put in is kept."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def naming(err: OSError, path: str | os.PathLike[str]) -> OSError:
    """The same OS error naming `path` (the target a user asked for, not a temporary or lock file)."""
    if err.errno is not None:
        return OSError(err.errno, err.strerror or os.strerror(err.errno), os.fspath(path))
    return OSError(f"{os.fspath(path)}: {os_error_message(err)}")


def os_error_message(err: OSError) -> str:
    """One line for an OS error: the path and the errno's words ("out.jsonl: No space left on device").

    >>> os_error_message(OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/out.jsonl"))
    '/ro/out.jsonl: Read-only file system'
    >>> os_error_message(FileNotFoundError("pairs.jsonl: no such file"))
    'pairs.jsonl: no such file'
    """
    if err.filename is not None and err.strerror:
        target = f" -> {os.fspath(err.filename2)}" if err.filename2 is not None else ""
        return f"{os.fspath(err.filename)}{target}: {err.strerror}"
    if err.strerror:
        return err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_writable(outputs: Sequence[str | os.PathLike[str] | None]) -> None:
    """Before any work: an OSError naming each output that cannot be created where it is asked for.

    The nearest existing folder above the output must be a folder (not a file: "Not a directory")
    in which a file can be created: a probe file is created there and removed at once, so a
    read-only file system, a missing permission or a full inode table is found now, with the OS's
    own words, and not after the model ran.
    """
    for entry in outputs:
        if entry is None:
            continue
        target = Path(entry).expanduser()
        folder = target.parent
        while not os.path.lexists(folder) and folder.parent != folder:
            folder = folder.parent
        if not folder.is_dir():
            raise OSError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)} ({folder} is a file)", str(target))
        probe = folder / f".legend-probe.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
        try:
            descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except OSError as err:
            raise naming(err, target) from None
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.unlink(probe)


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

    Same folder, so `os.replace` is an atomic rename. Before it, the file gets the permissions of
    the file it replaces, or those the umask gives a new file (whatever API wrote it). On failure
    the temporary and any parent folder created for it are removed, and an OSError names ``target``.
    """
    target = Path(target)
    try:
        created = make_parents(target.parent)
    except OSError as err:
        raise naming(err, target) from None
    temporary = temporary_name(target)
    try:
        yield temporary
        if os.path.lexists(temporary):
            try:
                os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
            except FileNotFoundError:
                give_usual_permissions(temporary)
        os.replace(temporary, target)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        remove_empty_folders(created)
        if isinstance(err, OSError) and err.filename in (None, str(temporary), os.fspath(temporary)):
            raise naming(err, target) from err
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
    try:
        created = make_parents(lock.parent)  # removed again if the run leaves them empty
    except OSError as err:
        raise naming(err, target) from None
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
        except OSError as err:
            remove_empty_folders(created)
            raise naming(err, target) from None
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        break
    else:
        remove_empty_folders(created)
        raise DataError(f"could not take the lock file {lock}", source=str(target))
    try:
        with unwind_on_termination():
            yield lock
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
        remove_empty_folders(created)


TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def unwind_on_termination() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception while the body runs, so its clean-up (`finally`) runs.

    By default those signals end the process at once, leaving a lock file and temporaries behind;
    here they raise SystemExit(128 + signal number), which the `with` blocks above unwind like a
    Ctrl-C (SIGINT already raises KeyboardInterrupt). A handler the program installed itself is left
    alone, and outside the main thread (where Python runs handlers) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def stop(number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        with contextlib.suppress(OSError):
            os.write(2, f"legend: stopped by {name}; cleaning up\n".encode())
        raise SystemExit(128 + number)

    for number in TERMINATING_SIGNALS:
        try:
            if signal.getsignal(number) is signal.SIG_DFL:
                previous[number] = signal.signal(number, stop)
        except (OSError, ValueError):  # not settable here
            continue
    try:
        yield
    finally:
        for number, handler in previous.items():
            with contextlib.suppress(OSError, ValueError):
                signal.signal(number, handler)


@contextlib.contextmanager
def file_lock(target: str | os.PathLike[str], timeout: float = 120.0) -> Iterator[None]:
    """Hold an exclusive lock on `target` (a shared file several runs update, e.g. a dataset card) while the body
    reads, changes and rewrites it; other processes wait (up to `timeout` seconds, then a DataError).

    The lock is `flock` on `.<name>.lock` beside the target: the OS releases it when a holder dies,
    so a killed run never blocks the next one. The lock file is removed on release (a waiter that
    then holds a removed file notices it and locks the new one).
    """
    import fcntl
    import time

    lock = lock_path(target)
    deadline = time.monotonic() + timeout
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise naming(err, target) from None
        try:
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DataError(
                            f"another run has held the lock file {lock} for {timeout:.0f} s; wait for it, or delete "
                            "the lock file if no such run exists",
                            source=str(target),
                        ) from None
                    time.sleep(0.01)
            try:
                same = os.stat(lock).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(descriptor)
            raise
        if same:
            break
        os.close(descriptor)  # removed by the holder before us: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(descriptor)


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
    try:
        created = make_parents(target.parent)
        temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        raise naming(err, target) from None
    try:
        yield temporary
        if target.exists() and not replace:
            shutil.rmtree(temporary)
            return
        give_usual_permissions(temporary)  # mkdtemp made it 0700, some writers make 0600 files
        if target.exists():
            shutil.rmtree(target)
        os.replace(temporary, target)
    except BaseException as err:
        shutil.rmtree(temporary, ignore_errors=True)
        remove_empty_folders(created)
        if isinstance(err, OSError) and (err.filename is None or str(temporary) in os.fspath(err.filename)):
            raise naming(err, target) from err
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
    for batch in chunk.select_columns(names).with_format(None).iter(batch_size=_BATCH_ROWS):
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
        for batch in chunk.with_format(None).iter(batch_size=_BATCH_ROWS):
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
