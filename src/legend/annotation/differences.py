"""The pairs' embedding differences, kept from the annotation's one encoding pass (`--keep-differences`).

Row i of tensor `margin_raw` is e(prompt+chosen) − e(prompt+rejected) of row i of the annotated file at
the first direction's layer and pooling (the margin is that row · the direction); `margin_raw_<name>`
holds the other directions' at theirs. `legend evaluate` and `legend report` score random directions on
them (the random floor) without loading a model. The file is a plain safetensors file in the hidden
`.legend/` folder beside the data (`datasets` does not read it as data), float32, written atomically;
a large one is written a chunk at a time (`write_differences_streamed`), so memory stays flat.
Cost: 4 × hidden bytes per pair and direction (576-d: 2.3 MB per 1,000 pairs; 4096-d: 16.4 MB).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_path, safetensors_header
from .card import METADATA_FOLDER

DIFFERENCES_SUFFIX = ".differences.safetensors"
LEGACY_KEY = "differences"  # files of legend <= 0.1 held one tensor under this name, beside the data


def differences_path(annotated: str | os.PathLike[str]) -> Path:
    """Where the embedding differences of an annotated file live.

    >>> str(differences_path("prefs/train.jsonl"))
    'prefs/.legend/train.jsonl.differences.safetensors'
    """
    path = Path(annotated)
    return path.parent / METADATA_FOLDER / f"{path.name}{DIFFERENCES_SUFFIX}"


def legacy_differences_path(annotated: str | os.PathLike[str]) -> Path:
    """Where earlier versions put them: beside the data (read, never written)."""
    path = Path(annotated)
    return path.with_name(path.name + DIFFERENCES_SUFFIX)


def find_differences(annotated: str | os.PathLike[str]) -> Path | None:
    """The differences file of an annotated file, at its place or its older one; None when there is none."""
    return next((p for p in (differences_path(annotated), legacy_differences_path(annotated)) if p.is_file()), None)


def write_differences_streamed(
    path: str | os.PathLike[str],
    columns: Sequence[str],
    rows: int,
    hidden: int,
    chunks: Callable[[int], Iterable[np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a safetensors file of one [rows, hidden] float32 tensor per column, a chunk at a time.

    Args:
        path: the file (written to a temporary name, then renamed).
        columns: the tensor names, in order (the margin columns they explain).
        rows: the rows of every tensor.
        hidden: their width.
        chunks: `chunks(k)` yields tensor k's rows in order, in blocks [n_i, hidden] summing to `rows`.
        metadata: strings stored in the header.

    Returns:
        The path.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "d.safetensors"
    >>> _ = write_differences_streamed(path, ["margin_raw"], 3, 2, lambda k: [np.ones((2, 2)), np.zeros((1, 2))])
    >>> read_differences(path, 3).tolist()
    [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    """
    meta = {"rows": str(rows), "hidden": str(hidden), "columns": ",".join(columns), **(metadata or {})}
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(safetensors_header({column: ("float32", (rows, hidden)) for column in columns}, meta))
        for k, column in enumerate(columns):
            written = 0
            for block in chunks(k):
                block = np.ascontiguousarray(block, dtype="<f4")
                if block.ndim != 2 or block.shape[1] != hidden:
                    raise ValueError(f"differences of {column}: a block of shape {block.shape}, expected [n, {hidden}]")
                handle.write(block.tobytes())
                written += block.shape[0]
            if written != rows:
                raise ValueError(f"differences of {column}: {written} rows written, expected {rows}")
    return Path(path)


def write_differences(
    path: str | os.PathLike[str], arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> Path:
    """Write in-memory differences ({margin column: [rows, hidden]}) as `write_differences_streamed` does."""
    columns = list(arrays)
    first = np.asarray(arrays[columns[0]])
    return write_differences_streamed(
        path, columns, first.shape[0], first.shape[1], lambda k: [np.asarray(arrays[columns[k]])], metadata
    )


def read_differences(path: str | os.PathLike[str], n_rows: int, margin_column: str = "margin_raw") -> np.ndarray:
    """The differences explaining `margin_column`, checked against the table they belong to (memory-mapped read).

    A damaged or foreign file is a one-line DataError naming it.
    """
    from safetensors import safe_open

    name = str(path)
    try:
        with safe_open(name, framework="numpy") as handle:
            keys, meta = list(handle.keys()), handle.metadata() or {}
            if margin_column in keys:
                differences = handle.get_tensor(margin_column)
            elif LEGACY_KEY in keys and meta.get("margin_column", "margin_raw") == margin_column:
                differences = handle.get_tensor(LEGACY_KEY)
            else:
                raise DataError(
                    f"no embedding differences of {margin_column!r} (it holds: {', '.join(keys) or 'nothing'})",
                    source=name,
                )
    except DataError:
        raise
    except Exception as err:  # safetensors' own error types for a truncated or foreign file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"not a readable safetensors file ({first}): the embedding differences are damaged; delete the file (it "
            "is only needed for the random floor) or annotate again",
            source=name,
        ) from None
    if not np.issubdtype(differences.dtype, np.floating) or not np.all(np.isfinite(differences)):
        raise DataError("the embedding differences must be finite floating-point numbers", source=name)
    if differences.ndim != 2 or differences.shape[0] != n_rows:
        rows = differences.shape[0] if differences.ndim else 0
        raise DataError(
            f"embedding differences for {rows} rows, but the data has {n_rows} (shape {tuple(differences.shape)})",
            source=name,
        )
    return differences
