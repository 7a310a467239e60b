"""Single-process annotation with memory bounded by a chunk, not by the dataset.

Binning needs every raw margin before any `margin` can be written, so a file is read twice:
pass 1 streams the input in chunks of `chunk_rows` pairs and computes the raw margins (8 bytes a
row are kept), the bin edges are fitted, and pass 2 streams the input again and appends each chunk,
with `margin_raw` and `margin`, to a temporary output that replaces `out` once complete.
Local .jsonl/.parquet/.csv (and .jsonl.gz/.csv.gz) files are streamed with `datasets` streaming;
other sources (a .json list, dataset folders, the Hub) are loaded by `load_table` and then chunked.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..data import (
    DataError,
    _atomic_path,
    _json_default,
    _quiet_datasets,
    detect_layout,
    load_table,
    pair_views,
)
from ..directions import Direction
from ..margins import Binning, MarginResult, compute_margins, describe
from ..models import LoadedModel

DEFAULT_CHUNK_ROWS = 4096
_STREAMED = {".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def streamable_format(path: Path) -> str | None:
    """The `datasets` streaming builder for a local file we can read in chunks, else None."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None
    return _STREAMED.get(suffixes[-1]) if suffixes and path.is_file() else None


def iter_chunks(data: str | os.PathLike, chunk_rows: int = DEFAULT_CHUNK_ROWS, *, split: str = "train",
                limit: int | None = None) -> Iterator[datasets.Dataset]:
    """Yield the rows of `data` in order as Datasets of at most `chunk_rows` rows (at most `limit` rows in all).

    Streamed files never hold more than a chunk (plus the reader's block) in memory.
    Raises DataError (from `load_table`'s checks) for unreadable, malformed or empty input.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    path = Path(os.fspath(data)).expanduser()
    builder = streamable_format(path)
    remaining = float("inf") if limit is None else limit
    if builder is None:
        table = load_table(data, split=split)
        stop = int(min(len(table), remaining))
        for start in range(0, stop, chunk_rows):
            yield table.select(range(start, min(start + chunk_rows, stop)))
        return
    seen = 0
    try:
        with _quiet_datasets():
            stream = datasets.load_dataset(builder, data_files=glob.escape(str(path)), split="train", streaming=True)
            batches = stream.iter(batch_size=chunk_rows)
            for batch in batches:
                chunk = datasets.Dataset.from_dict(batch, features=stream.features)
                if len(chunk) > remaining - seen:
                    chunk = chunk.select(range(int(remaining - seen)))
                seen += len(chunk)
                if len(chunk):
                    yield chunk
                if seen >= remaining:
                    break
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - load_table names the file and line; re-raise its one line
        load_table(data, split=split)
        raise DataError(f"cannot read ({type(exc).__name__}: {exc})", source=str(data)) from exc
    if seen == 0:
        raise DataError("no rows", source=str(data))


class ChunkWriter:
    """Append Datasets to a .jsonl/.json/.parquet/.csv file; the file appears at `path` only when closed cleanly."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in (".jsonl", ".json", ".parquet", ".csv"):
            raise DataError(f"unknown output file type '{self.path.suffix or '(none)'}'; use .jsonl, .json, "
                            ".parquet or .csv", source=str(path))
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._handle = None
        self._parquet = None
        self._first = True

    def __enter__(self) -> "ChunkWriter":
        self._temporary = self._stack.enter_context(_atomic_path(self.path))
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

    def _write_json(self, chunk: datasets.Dataset) -> None:
        names = chunk.column_names
        batch = chunk.with_format(None)[:]
        for values in zip(*(batch[c] for c in names)):
            line = json.dumps(dict(zip(names, values)), ensure_ascii=False, default=_json_default)
            if self.suffix == ".json":
                self._handle.write(("\n" if self._first else ",\n") + line)
                self._first = False
            else:
                self._handle.write(line + "\n")

    def _write_parquet(self, chunk: datasets.Dataset) -> None:
        import pyarrow.parquet as pq

        table = chunk.with_format("arrow")[:]
        if self._parquet is None:
            self._parquet = self._stack.enter_context(pq.ParquetWriter(str(self._temporary), table.schema))
        elif table.schema != self._parquet.schema:
            try:
                table = table.cast(self._parquet.schema)
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"row {self.rows + 1}: the column types change from the first rows "
                                f"({exc}); write .jsonl instead", source=str(self.path)) from exc
        self._parquet.write_table(table)

    def _write_csv(self, chunk: datasets.Dataset) -> None:
        nested = [c for c, f in chunk.features.items() if not isinstance(f, (datasets.Value, datasets.ClassLabel))]
        if nested:
            raise DataError(f"CSV cannot hold nested column(s) {', '.join(nested)}; write .jsonl, .json or "
                            ".parquet instead", source=str(self.path))
        chunk.to_pandas().to_csv(self._handle, header=self.rows == 0, index=False)

    def __exit__(self, kind, error, traceback) -> None:
        if error is None and self.suffix == ".json":
            self._handle.write("]\n" if self.rows == 0 else "\n]\n")
        self._stack.__exit__(kind, error, traceback)


def chunk_views(chunk: datasets.Dataset, layout: str, columns, source: str, first_row: int):
    """pair_views of one chunk; a DataError names the row in the whole file, not in the chunk."""
    try:
        return pair_views(chunk, layout, columns, source=source)
    except DataError as err:
        if err.row is None:
            raise
        raise DataError(err.reason, source=err.source, line=err.line, row=err.row + first_row,
                        field=err.field) from None


def with_margins(chunk: datasets.Dataset, raw: np.ndarray, binning: Binning) -> datasets.Dataset:
    """The chunk with `margin_raw` and `margin` (replacing any columns of those names)."""
    chunk = chunk.remove_columns([c for c in ("margin_raw", "margin") if c in chunk.column_names])
    return chunk.add_column("margin_raw", raw.tolist()).add_column("margin", binning.apply(raw).tolist())


def margins_in_chunks(
    data: str | os.PathLike, direction: Direction, lm: LoadedModel, settings: Any, *, split: str = "train",
    limit: int | None = None,
) -> tuple[MarginResult, str]:
    """Pass 1: raw margins of every row, computed chunk by chunk; returns them and the layout."""
    source = str(data)
    start = time.perf_counter()
    raws: list[np.ndarray] = []
    layout = None
    totals = dict(n_identical=0, n_truncated_texts=0, n_tokens=0, forward_tokens=0)
    for chunk in iter_chunks(data, settings.chunk_rows, split=split, limit=limit):
        layout = layout or detect_layout(chunk, settings.columns, source=source)
        views = chunk_views(chunk, layout, settings.columns, source, sum(len(r) for r in raws))
        result = compute_margins(lm, views, direction, batch_size=settings.batch_size,
                                 max_batch_tokens=settings.max_batch_tokens, max_length=settings.max_length,
                                 progress=settings.progress, prefix_sharing=settings.prefix_sharing)
        raws.append(result.raw)
        totals["n_identical"] += result.n_identical
        totals["n_truncated_texts"] += result.n_truncated_texts
        totals["n_tokens"] += result.n_tokens
        totals["forward_tokens"] += result.extra.get("forward_tokens", 0)
    forward = totals.pop("forward_tokens")
    margins = MarginResult(raw=np.concatenate(raws), seconds=time.perf_counter() - start,
                           extra={"forward_tokens": forward, "chunks": len(raws)}, **totals)
    return margins, layout


def annotation_summary(source: str, layout: str, margins: MarginResult, binning: Binning, direction: Direction,
                       lm: LoadedModel, seconds: float, **extra: Any) -> dict[str, Any]:
    """The summary `legend annotate` prints and stores in the sidecar (same keys as `pipeline.annotate`)."""
    raw = margins.raw
    binned = binning.apply(raw)
    return {
        "source": source, "rows": int(raw.size), "layout": layout, "identical_pairs": margins.n_identical,
        "truncated_texts": margins.n_truncated_texts, "tokens": margins.n_tokens,
        "forward_tokens": margins.extra.get("forward_tokens"), "seconds": round(seconds, 3),
        "pairs_per_second": round(raw.size / seconds, 3) if seconds > 0 else None,
        "margin_raw": describe(raw), "margin": describe(binned, binned),
        "direction": {"name": direction.name, "model_id": direction.model_id, "layer": direction.layer,
                      "pooling": direction.pooling, "estimator": direction.estimator,
                      "fingerprint": direction.fingerprint},
        "model_id": lm.model_id, "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        **extra,
    }


def sidecar_document(data: Any, out: Any, direction_path: str | None, binning: Binning, settings: Any,
                     summary: dict[str, Any]) -> dict[str, Any]:
    """The `.legend.json` written next to the output (same keys as `pipeline.annotate_file` writes)."""
    from .. import __version__

    return {
        "legend_version": __version__, "output": str(out), "input": str(data), "direction_path": direction_path,
        "binning": binning.to_dict(),
        "binning_rule": "raw <= 0 -> lowest level; positive raw margins split into levels-1 equal-count groups",
        "binning_source": "loaded" if settings.binning else "fitted",
        "summary": summary,
    }


@contextlib.contextmanager
def sidecar_with(out: str | os.PathLike, sidecar: dict[str, Any]) -> Iterator[None]:
    """Write the sidecar as pending, run the body (which writes `out`), then publish it: both or neither."""
    from .. import pipeline

    final = pipeline.sidecar_path(out)
    pending = final.with_name(f".{final.name}.pending")
    pipeline.write_json(sidecar, pending)  # looked up there, so the pipeline's writer is the one used
    try:
        yield
        os.replace(pending, final)
    finally:
        pending.unlink(missing_ok=True)


def annotate_file_streamed(
    data: str | os.PathLike,
    direction: Direction | str | os.PathLike,
    out: str | os.PathLike,
    model: Any = None,
    settings: Any = None,
    *,
    split: str = "train",
    limit: int | None = None,
):
    """`legend.pipeline.annotate_file` for one direction with memory bounded by `settings.chunk_rows`.

    Returns a `pipeline.Annotation` whose `dataset` is None (the rows went to `out`, not to memory).
    """
    from ..models import as_loaded
    from ..pipeline import Annotation, AnnotateSettings

    settings = settings or AnnotateSettings()
    direction_path = None if isinstance(direction, Direction) else str(direction)
    if not isinstance(direction, Direction):
        direction = Direction.load(direction)
    ChunkWriter(out)  # refuse an unknown output type before any work
    lm = as_loaded(model, fallback=direction.model_id)
    start = time.perf_counter()
    margins, layout = margins_in_chunks(data, direction, lm, settings, split=split, limit=limit)
    binning = settings.binning or Binning.fit(margins.raw, settings.levels, settings.level_values)
    summary = annotation_summary(str(data), layout, margins, binning, direction, lm, time.perf_counter() - start,
                                 engine="local", chunk_rows=settings.chunk_rows)
    sidecar = sidecar_document(data, out, direction_path, binning, settings, summary)
    with sidecar_with(out, sidecar), ChunkWriter(out) as writer:
        for chunk in iter_chunks(data, settings.chunk_rows, split=split, limit=limit):
            writer.write(with_margins(chunk, margins.raw[writer.rows: writer.rows + len(chunk)], binning))
        if writer.rows != len(margins.raw):
            raise DataError(f"the input changed while it was annotated ({len(margins.raw)} rows, then "
                            f"{writer.rows})", source=str(data))
    return Annotation(dataset=None, binning=binning, summary=summary, margins=margins)
