"""Single-process annotation with memory bounded by a chunk, not by the dataset.

Binning needs every raw margin before any `margin` can be written, so a file is read twice:
pass 1 streams the input in chunks of `chunk_rows` pairs and computes the raw margins (8 bytes a
row are kept), the bin edges are fitted, and pass 2 streams the input again and appends each chunk,
with `margin_raw` and `margin`, to a temporary output that replaces `out` once complete.
Local .jsonl/.parquet/.csv (and .jsonl.gz/.csv.gz) files are streamed with `datasets` streaming;
other sources (a .json list, dataset folders, the Hub) are loaded by `load_table` and then chunked.

Several directions share each chunk's encoding pass (`compute_margins_multi`): the first fills
`margin_raw`/`margin`, each other one `margin_raw_<name>`/`margin_<name>` with its own bin edges.
Pass 1 keeps each finished chunk's raw margins in a work folder next to the output
(`.<out name>.legend-work/`, see `ChunkStore`), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
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
from ..margins import Binning, MarginResult, check_directions_agree, compute_margins_multi, describe
from ..models import LoadedModel

DEFAULT_CHUNK_ROWS = 4096
WORK_SUFFIX = ".legend-work"
log = logging.getLogger("legend.engines")
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


def margin_columns(directions: list[Direction]) -> list[tuple[str, str]]:
    """(raw column, level column) per direction: `margin_raw`/`margin`, then `margin_raw_<name>`/`margin_<name>`."""
    return [("margin_raw", "margin")] + [(f"margin_raw_{d.name}", f"margin_{d.name}") for d in directions[1:]]


def with_margins(chunk: datasets.Dataset, raws: list[np.ndarray], binnings: list[Binning],
                 directions: list[Direction]) -> datasets.Dataset:
    """The chunk with each direction's raw and binned margin columns (replacing any columns of those names)."""
    names = margin_columns(directions)
    chunk = chunk.remove_columns([c for pair in names for c in pair if c in chunk.column_names])
    for (raw_name, level_name), raw, binning in zip(names, raws, binnings):
        chunk = chunk.add_column(raw_name, raw.tolist()).add_column(level_name, binning.apply(raw).tolist())
    return chunk


def chunk_margins(lm: LoadedModel, views, directions: list[Direction], settings: Any) -> list[MarginResult]:
    """Raw margins of one chunk for every direction, from one encoding pass."""
    options = dict(batch_size=settings.batch_size, max_batch_tokens=settings.max_batch_tokens,
                   max_length=settings.max_length, progress=settings.progress, prefix_sharing=settings.prefix_sharing,
                   sharing_method=settings.sharing_method)
    return compute_margins_multi(lm, views, directions, **options)


# ---------------------------------------------------------------- resume: finished chunks on disk

COUNTS = ("rows", "n_identical", "n_truncated_texts", "n_tokens", "forward_tokens")


def work_folder(out: str | os.PathLike) -> Path:
    """Where pass 1 keeps finished chunks while `out` is being made: `.<out name>.legend-work/` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def input_identity(data: str | os.PathLike, split: str) -> dict[str, Any]:
    """What tells a changed input: path, size and modification time (of every file, for a folder)."""
    path = Path(os.fspath(data)).expanduser()
    if not path.exists():  # a Hub name: only the name and split are known
        return {"name": os.fspath(data), "split": split}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [p.stat() for p in files]
    return {"path": str(path.resolve()), "split": split, "files": len(files),
            "bytes": sum(s.st_size for s in stats), "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def resume_key(data: str | os.PathLike, directions: list[Direction], lm: LoadedModel, settings: Any, *,
               split: str, limit: int | None) -> dict[str, Any]:
    """Everything that changes pass 1's numbers or its chunking; finished chunks are reused only if all of it matches.

    Batch sizes and the device are left out: they change margins by float rounding only, and a run
    that ran out of memory should be resumable with a smaller batch.
    """
    from .. import __version__

    return {
        "legend_version": __version__,
        "input": input_identity(data, split),
        "limit": limit, "chunk_rows": settings.chunk_rows,
        "columns": {"prompt": settings.columns.prompt, "chosen": settings.columns.chosen,
                    "rejected": settings.columns.rejected},
        "model": {"model_id": lm.model_id, "fingerprint": lm.fingerprint,
                  "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", "")},
        "max_length": settings.max_length, "prefix_sharing": settings.prefix_sharing,
        "directions": [{"name": d.name, "layer": d.layer, "pooling": d.pooling, "template": d.template,
                        "max_length": d.max_length, "fingerprint": d.fingerprint,
                        "vector_sha256": hashlib.sha256(d.vector.double().numpy().tobytes()).hexdigest()}
                       for d in directions],
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
        """The stored results of chunk `index`, or None when it was not finished (or does not fit)."""
        path = self._chunk(index)
        if not path.exists():
            return None
        try:
            with np.load(path) as stored:
                counts = dict(zip(COUNTS, stored["counts"].tolist()))
                raws = [stored[f"raw_{i}"] for i in range(n_directions)]
        except (OSError, ValueError, KeyError):
            return None
        if counts.pop("rows") != rows or any(len(raw) != rows for raw in raws):
            return None
        forward = counts.pop("forward_tokens")
        self.reused += 1
        return [MarginResult(raw=raw, seconds=0.0, extra={"forward_tokens": None if forward < 0 else forward},
                             **counts) for raw in raws]

    def save(self, index: int, results: list[MarginResult]) -> None:
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            _write_atomically(self.folder / "manifest.json",
                              lambda handle: handle.write(json.dumps({"key": self.key}, indent=1).encode()))
        first = results[0]
        forward = first.extra.get("forward_tokens")
        counts = np.array([len(first.raw), first.n_identical, first.n_truncated_texts, first.n_tokens,
                           -1 if forward is None else forward], dtype=np.int64)
        arrays = {f"raw_{i}": r.raw for i, r in enumerate(results)}
        _write_atomically(self._chunk(index), lambda handle: np.savez(handle, counts=counts, **arrays))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_atomically(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------- the two passes

def margins_in_chunks(
    data: str | os.PathLike, directions: list[Direction], lm: LoadedModel, settings: Any, *, split: str = "train",
    limit: int | None = None, store: ChunkStore | None = None,
) -> tuple[list[MarginResult], str]:
    """Pass 1: raw margins of every row for each direction, chunk by chunk; returns them and the layout.

    With a `store`, chunks it holds are read instead of computed and each computed chunk is saved.
    """
    source = str(data)
    start = time.perf_counter()
    per_chunk: list[list[MarginResult]] = []
    layout = None
    rows = 0
    for index, chunk in enumerate(iter_chunks(data, settings.chunk_rows, split=split, limit=limit)):
        layout = layout or detect_layout(chunk, settings.columns, source=source)
        results = store.load(index, len(chunk), len(directions)) if store else None
        if results is None:
            views = chunk_views(chunk, layout, settings.columns, source, rows)
            results = chunk_margins(lm, views, directions, settings)
            if store:
                store.save(index, results)
        per_chunk.append(results)
        rows += len(chunk)
    first = [results[0] for results in per_chunk]
    forwards = [r.extra.get("forward_tokens") for r in first]
    totals = dict(n_identical=sum(r.n_identical for r in first), n_truncated_texts=sum(r.n_truncated_texts for r in first),
                  n_tokens=sum(r.n_tokens for r in first), seconds=time.perf_counter() - start)
    extra = {"forward_tokens": None if None in forwards else sum(forwards), "chunks": len(per_chunk),
             "chunks_reused": store.reused if store else 0}
    margins = [MarginResult(raw=np.concatenate([results[i].raw for results in per_chunk]), extra=dict(extra), **totals)
               for i in range(len(directions))]
    return margins, layout


def other_directions_summary(directions: list[Direction], raws: list[np.ndarray],
                             binnings: list[Binning]) -> dict[str, Any]:
    """The summary's `other_directions` (directions after the first), as `pipeline.annotate` writes it."""
    summary = {}
    for direction, raw, binning, (raw_name, level_name) in zip(directions[1:], raws[1:], binnings[1:],
                                                               margin_columns(directions)[1:]):
        binned = binning.apply(raw)
        summary[direction.name] = {"columns": [raw_name, level_name], "layer": direction.layer,
                                   "pooling": direction.pooling, "estimator": direction.estimator,
                                   "margin_raw": describe(raw), "margin": describe(binned, binned)}
    return summary


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


def sidecar_document(data: Any, out: Any, direction_path: Any, binning: Binning, settings: Any,
                     summary: dict[str, Any], others: dict[str, Binning] | None = None) -> dict[str, Any]:
    """The `.legend.json` written next to the output (same keys as `pipeline.annotate_file` writes).

    `others`: name -> Binning of the directions after the first (`other_binnings`, with their columns).
    """
    from .. import __version__

    document = {
        "legend_version": __version__, "output": str(out), "input": str(data), "direction_path": direction_path,
        "binning": binning.to_dict(),
        "binning_rule": "raw <= 0 -> lowest level; positive raw margins split into levels-1 equal-count groups",
        "binning_source": "loaded" if settings.binning else "fitted",
        "summary": summary,
    }
    if others:
        document["other_binnings"] = {name: {"columns": [f"margin_raw_{name}", f"margin_{name}"], **b.to_dict()}
                                      for name, b in others.items()}
    return document


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


def load_directions(direction: Any) -> tuple[list[Direction], Any]:
    """Directions (one, or a list) loaded from folders where needed, and their paths as the sidecar records them."""
    items = list(direction) if isinstance(direction, (list, tuple)) else [direction]
    if not items:
        raise ValueError("no direction given")
    paths = [None if isinstance(d, Direction) else str(d) for d in items]
    directions = [d if isinstance(d, Direction) else Direction.load(d) for d in items]
    if len(directions) > 1:
        check_directions_agree(directions)
    return directions, paths if isinstance(direction, (list, tuple)) and len(items) > 1 else paths[0]


def fit_binnings(raws: list[np.ndarray], settings: Any) -> list[Binning]:
    """Each direction's own bin edges; edges given in `settings.binning` apply to the first direction only."""
    return [settings.binning if i == 0 and settings.binning else Binning.fit(raw, settings.levels, settings.level_values)
            for i, raw in enumerate(raws)]


def secondary_of(directions: list[Direction], margins: list[MarginResult], binnings: list[Binning]) -> dict:
    """`Annotation.secondary` for the directions after the first, as `pipeline.annotate` fills it."""
    return {d.name: {"binning": b, "margins": m, "direction": d, "margin_raw": describe(m.raw),
                     "margin": describe(b.apply(m.raw), b.apply(m.raw))}
            for d, m, b in zip(directions[1:], margins[1:], binnings[1:])}


def annotate_file_streamed(
    data: str | os.PathLike,
    direction: Direction | str | os.PathLike | list,
    out: str | os.PathLike,
    model: Any = None,
    settings: Any = None,
    *,
    split: str = "train",
    limit: int | None = None,
    resume: bool = True,
):
    """`legend.pipeline.annotate_file` with memory bounded by `settings.chunk_rows`, for one or several directions.

    With `resume`, pass 1 saves each finished chunk in `work_folder(out)` and a rerun with the same
    `resume_key` reads them back instead of computing them; the folder is removed once `out` is
    written, and also after a failure that needs a change of input or options (DataError, ValueError,
    FileNotFoundError), since that change starts clean anyway. Any other failure (an interrupt, out of
    memory, a crash) leaves it for the next run. Returns a `pipeline.Annotation` whose `dataset` is
    None (the rows went to `out`, not to memory).
    """
    from ..models import as_loaded
    from ..pipeline import AnnotateSettings

    settings = settings or AnnotateSettings()
    directions, direction_path = load_directions(direction)
    ChunkWriter(out)  # refuse an unknown output type before any work
    lm = as_loaded(model, fallback=directions[0].model_id)
    for each in directions:
        each.check_compatible(lm)  # before any work folder appears
    store = None
    if resume:
        store = ChunkStore(work_folder(out), resume_key(data, directions, lm, settings, split=split, limit=limit))
    try:
        result = _annotate_in_two_passes(data, directions, direction_path, out, lm, settings, split, limit, store)
    except (DataError, ValueError, FileNotFoundError):
        if store:
            store.remove()
        raise
    if store:
        store.remove()
    return result


def _annotate_in_two_passes(data, directions, direction_path, out, lm, settings, split, limit, store):
    from ..pipeline import Annotation

    start = time.perf_counter()
    margins, layout = margins_in_chunks(data, directions, lm, settings, split=split, limit=limit, store=store)
    raws = [m.raw for m in margins]
    binnings = fit_binnings(raws, settings)
    extra = dict(engine="local", chunk_rows=settings.chunk_rows)
    if store and store.reused:
        log.warning("resumed: %d finished chunk(s) of %d read from %s", store.reused, margins[0].extra["chunks"],
                    store.folder)
    if store:
        extra["resume"] = {"work_folder": str(store.folder), "chunks_reused": store.reused,
                           "chunks_computed": margins[0].extra["chunks"] - store.reused,
                           "discarded_because": store.discarded}
    summary = annotation_summary(str(data), layout, margins[0], binnings[0], directions[0], lm,
                                 time.perf_counter() - start, **extra)
    if len(directions) > 1:
        summary["other_directions"] = other_directions_summary(directions, raws, binnings)
    sidecar = sidecar_document(data, out, direction_path, binnings[0], settings, summary,
                               {d.name: b for d, b in zip(directions[1:], binnings[1:])})
    with sidecar_with(out, sidecar), ChunkWriter(out) as writer:
        for chunk in iter_chunks(data, settings.chunk_rows, split=split, limit=limit):
            rows = slice(writer.rows, writer.rows + len(chunk))
            writer.write(with_margins(chunk, [raw[rows] for raw in raws], binnings, directions))
        if writer.rows != len(raws[0]):
            raise DataError(f"the input changed while it was annotated ({len(raws[0])} rows, then "
                            f"{writer.rows})", source=str(data))
    return Annotation(dataset=None, binning=binnings[0], summary=summary, margins=margins[0],
                      secondary=secondary_of(directions, margins, binnings))
