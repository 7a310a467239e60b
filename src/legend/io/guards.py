"""Checks before any work that an output can be written: its folder can take a file (`check_writable`) and
writing it would not overwrite, delete or change an input (`check_outputs_spare_inputs`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from .paths import TEMP_SUFFIX, naming


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
