"""The OS side of writing a file: the umask's permissions, parent folders created and removed again, and an OS
error as one line naming the target a user asked for (not a temporary or lock file).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from pathlib import Path

TEMP_SUFFIX = ".tmp"


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
