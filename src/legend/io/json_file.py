"""JSON documents: `write_json` (pretty UTF-8, atomically) and `json_default`, the JSON form of the non-JSON
values results may hold (numpy scalars and arrays, paths, dates).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_path


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


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` as pretty, UTF-8 JSON, atomically.

    NumPy scalars and arrays (anything with ``tolist``), paths and dates are
    converted; other non-JSON values raise TypeError, leaving no output.
    """
    with atomic_path(Path(path)) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2, default=json_default)
        handle.write("\n")
