"""Resume: pass 1's finished chunks kept on disk (`ChunkStore`, in `work_folder(out)`) under a `resume_key` naming
everything that changes their numbers, the input identified by its content (`input_identity`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..annotation import AnnotateSettings
from ..data import InputScan
from ..data.streaming import content_digest
from ..directions import Direction
from ..encoding import Encoder, as_encoder
from ..io import write_bytes_atomically
from ..margins import MarginResult
from ..models import LoadedModel

WORK_SUFFIX = ".legend-work"
log = logging.getLogger("legend.engines")

COUNTS = ("rows", "n_identical", "n_truncated_texts", "n_tokens", "forward_tokens", "n_answer_truncated")


def work_folder(out: str | os.PathLike) -> Path:
    """Where pass 1 keeps finished chunks while `out` is being made: `.<out name>.legend-work/` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def input_identity(data: str | os.PathLike, split: str, content: str | None = None) -> dict[str, Any]:
    """What tells a changed input: its content, hashed (`InputScan.content`, made by the pass over every row).

    A file is its bytes, a folder its files (relative paths and bytes), a Hub dataset the rows read;
    its path, size and modification time say nothing (an edit in place can keep all three).
    """
    path = Path(os.fspath(data)).expanduser()
    if content is None:
        content = content_digest(data)
    if not path.exists():  # a Hub name: the rows read (when scanned), its name and split
        return {"name": os.fspath(data), "split": split, "content": content}
    return {"kind": "file" if path.is_file() else "folder", "split": split, "content": content}


def resume_key(
    data: str | os.PathLike,
    directions: list[Direction],
    lm: Encoder | LoadedModel,
    settings: AnnotateSettings,
    *,
    split: str,
    limit: int | None,
    scan: InputScan | None = None,
) -> dict[str, Any]:
    """Everything that changes pass 1's numbers or its chunking; finished chunks are reused only if all of it matches.

    Batch sizes and the device are left out: they change margins by float rounding only, and a run
    that ran out of memory should be resumable with a smaller batch. The input is identified by its
    content (`scan.content`; hashed here when no scan is given).
    """
    lm = as_encoder(lm)
    return {
        "legend_version": __version__,
        "input": input_identity(data, split, scan.content if scan is not None else None),
        "limit": limit,
        "chunk_rows": settings.chunk_rows,
        "columns": {
            "prompt": settings.columns.prompt,
            "chosen": settings.columns.chosen,
            "rejected": settings.columns.rejected,
        },
        "model": {"model_id": lm.model_id, "fingerprint": lm.fingerprint, "dtype": lm.dtype_name, "encoder": lm.name},
        "max_length": settings.encoding.max_length,
        "prefix_sharing": settings.encoding.prefix_sharing,
        # What each stored chunk holds besides its margins (a chunk without them cannot be reused).
        "kept": {
            "differences": settings.keep_differences,
            "evidence": settings.evidence,
            "random_directions": settings.random_directions if settings.evidence == "labelled" else None,
            "seed": settings.seed if settings.evidence == "labelled" else None,
        },
        "directions": [
            {
                "name": d.name,
                "layer": d.layer,
                "pooling": d.pooling,
                "template": d.template,
                "max_length": d.max_length,
                "fingerprint": d.fingerprint,
                "tokenizer_fingerprint": d.tokenizer_fingerprint,
                "vector_sha256": hashlib.sha256(d.vector.double().numpy().tobytes()).hexdigest(),
            }
            for d in directions
        ],
    }


class ChunkStore:
    """Pass 1's finished chunks in a work folder: one `.npz` per chunk (raw margins and counts), written atomically.

    `manifest.json` holds the `resume_key`; a folder made under another key is emptied first. The
    folder appears only when the first chunk is saved.
    """

    def __init__(self, folder: str | os.PathLike, key: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.key = json.loads(json.dumps(key, default=str))  # as it reads back from the manifest
        self.discarded: list[str] = []  # what differed, when an earlier run's chunks were thrown away
        manifest = self.folder / "manifest.json"
        if manifest.exists():
            try:
                stored = json.loads(manifest.read_text()).get("key", {})
            except (OSError, ValueError):
                stored = {"unreadable": True}
            if stored != self.key:
                self.discarded = sorted(k for k in set(stored) | set(self.key) if stored.get(k) != self.key.get(k))
                log.warning("%s was made with a different %s: starting clean", self.folder, ", ".join(self.discarded))
                shutil.rmtree(self.folder)
        elif self.folder.exists():
            shutil.rmtree(self.folder)  # no manifest: nothing in it can be trusted
        self.reused = 0

    def _chunk(self, index: int) -> Path:
        return self.folder / f"chunk-{index:06d}.npz"

    def load(self, index: int, rows: int, n_directions: int) -> list[MarginResult] | None:
        """The stored results of chunk `index` (raw margins, counts, and the random margins and length
        differences when kept; embedding differences stay on disk, see `differences`), or None when it was
        not finished (or does not fit)."""
        path = self._chunk(index)
        if not path.exists():
            return None
        try:
            with np.load(path) as stored:
                counts = dict(zip(COUNTS, stored["counts"].tolist()))
                raws = [stored[f"raw_{i}"] for i in range(n_directions)]
                randoms = [stored.get(f"rand_{i}") for i in range(n_directions)]
                length_diff = stored.get("length_diff")
        except (OSError, ValueError, KeyError):
            return None
        if counts.pop("rows") != rows or any(len(raw) != rows for raw in raws):
            return None
        forward = counts.pop("forward_tokens")
        self.reused += 1
        results = [
            MarginResult(
                raw=raw,
                seconds=0.0,
                extra={"forward_tokens": None if forward < 0 else forward},
                random_margins=random,
                **counts,
            )
            for raw, random in zip(raws, randoms)
        ]
        if length_diff is not None:
            results[0].extra["length_diff"] = length_diff
        return results

    def save(self, index: int, results: list[MarginResult]) -> None:
        """Store chunk `index`'s results (atomically); its embedding differences too, when kept."""
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            write_bytes_atomically(
                self.folder / "manifest.json",
                lambda handle: handle.write(json.dumps({"key": self.key}, indent=1).encode()),
            )
        first = results[0]
        forward = first.extra.get("forward_tokens")
        counts = np.array(
            [
                len(first.raw),
                first.n_identical,
                first.n_truncated_texts,
                first.n_tokens,
                -1 if forward is None else forward,
                first.n_answer_truncated,
            ],
            dtype=np.int64,
        )
        arrays = {f"raw_{i}": r.raw for i, r in enumerate(results)}
        arrays.update({f"rand_{i}": r.random_margins for i, r in enumerate(results) if r.random_margins is not None})
        arrays.update({f"diff_{i}": r.differences for i, r in enumerate(results) if r.differences is not None})
        if "length_diff" in first.extra:
            arrays["length_diff"] = first.extra["length_diff"]
        write_bytes_atomically(self._chunk(index), lambda handle: np.savez(handle, counts=counts, **arrays))  # type: ignore[arg-type]

    def differences(self, chunks: int, direction: int) -> Iterator[np.ndarray]:
        """Direction `direction`'s embedding differences, chunk by chunk in row order (read from disk)."""
        for index in range(chunks):
            with np.load(self._chunk(index)) as stored:
                yield stored[f"diff_{direction}"]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
