"""Safetensors files, byte for byte reproducible: `safetensors_header` (keys sorted, data 8-byte aligned) and
`write_safetensors` (atomically).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from .atomic import atomic_path

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
    >>> from pathlib import Path
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
