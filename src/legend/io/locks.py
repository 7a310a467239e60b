"""Locks on shared state: `output_lock` (one writer of an output, released on SIGTERM/SIGHUP as on an
exception, through `unwind_on_termination`) and `file_lock` (a short read-modify-write of a shared file such as
a dataset card).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from .paths import make_parents, naming, remove_empty_folders

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
