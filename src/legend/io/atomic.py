"""Atomic writing: a file written to a temporary sibling and renamed over its target (`atomic_path`,
`write_bytes_atomically`), a folder built beside its target and renamed into place (`atomic_folder`), and the
temporaries an interrupted write left behind (`leftover_temporaries`, `remove_leftovers`).

On any failure nothing is left behind: not the temporary, and not a parent folder the write created. What
appears gets the permissions the umask gives a new file or folder (`legend.io.paths`), whatever the
temporary-file API created; a file that replaces an existing one keeps that file's permissions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .paths import TEMP_SUFFIX, give_usual_permissions, make_parents, naming, remove_empty_folders


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
