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
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..annotation import (
    AnnotateSettings,
    Annotation,
    DirectionArg,
    Finished,
    check_card,
    check_margin_columns,
    check_text_settings,
    finish_annotation,
    load_directions,
    margin_columns,
    metadata_paths,
    sidecar_path,
    write_card,
)
from ..annotation.differences import differences_path, write_differences_streamed
from ..data import LAYOUTS, DataError, InputScan, PairView, chunk_views, iter_chunks, scan_input
from ..data.reading import input_format
from ..data.streaming import content_digest
from ..data.values import csv_records, json_records
from ..directions import Direction
from ..encoding import Encoder, as_encoder, load_encoder
from ..io import (
    ChunkWriter,
    check_output_type,
    check_outputs_spare_inputs,
    check_writable,
    make_parents,
    output_lock,
    remove_empty_folders,
    remove_leftovers,
    write_bytes_atomically,
    write_json,
)
from ..margins import MarginResult, compute_margins_multi
from ..metrics import random_unit_directions
from ..models import LoadedModel, ModelSpec
from ..quality import label_evidence

WORK_SUFFIX = ".legend-work"
log = logging.getLogger("legend.engines")


def chunk_margins(
    encoder: Encoder, views: Sequence[PairView], directions: list[Direction], settings: AnnotateSettings
) -> list[MarginResult]:
    """Raw margins of one chunk for every direction, from one encoding pass.

    With `settings.keep_differences` each result holds the pairs' embedding differences; with evidence
    resolved to "labelled" (`resolve_evidence`), their margins on the floor's random directions and the
    first result the pairs' length differences (characters of chosen − rejected), all from the same pass.
    """
    labelled = settings.evidence == "labelled"
    random = random_directions(encoder.hidden_size, settings.random_directions, settings.seed) if labelled else None
    results = compute_margins_multi(
        encoder,
        views,
        directions,
        settings.encoding,
        keep_differences=settings.keep_differences,
        random_directions=random,
    )
    if labelled:
        results[0].extra["length_diff"] = np.array([len(v.chosen) - len(v.rejected) for v in views], dtype=np.float64)
    return results


@functools.lru_cache(maxsize=4)
def random_directions(hidden: int, n: int, seed: int) -> np.ndarray:
    """The floor's random unit directions (`legend.metrics.random_unit_directions`), made once per run."""
    return random_unit_directions(hidden, n, seed)


def resolve_evidence(settings: AnnotateSettings, layout: str) -> AnnotateSettings:
    """`settings` with `evidence` decided for this input: "labelled" where asked, or "auto" and the layout carries
    labels (`PairLayout.labelled`: hh, pku); else "off"."""
    wanted = settings.wants_evidence(LAYOUTS[layout].labelled if layout in LAYOUTS else False)
    return dataclasses.replace(settings, evidence="labelled" if wanted else "off")


def check_finite(results: Sequence[MarginResult], directions: Sequence[Direction], source: str, first_row: int) -> None:
    """A NaN/inf raw margin is an error naming its row (binning would put it in a level silently)."""
    for result, direction in zip(results, directions):
        bad = np.flatnonzero(~np.isfinite(result.raw))
        if bad.size:
            which = f" for direction {direction.name!r}" if len(directions) > 1 else ""
            raise DataError(
                f"the raw margin{which} is {result.raw[bad[0]]} ({bad.size} such row(s) in this chunk): the model's "
                "hidden states are not finite for this pair; try --dtype float32 or a shorter --max-length",
                source=source,
                row=first_row + int(bad[0]) + 1,
            )


# ---------------------------------------------------------------- the output and what stays beside it


def metadata_files(out: str | os.PathLike) -> list[Path]:
    """The files written beside `out` with it (its metadata); an interrupted run's leftovers of each are removed."""
    final = sidecar_path(out)
    return [final, final.with_name(f".{final.name}.pending"), metadata_paths(out).card, differences_path(out)]


def output_files(out: str | os.PathLike) -> list[Path]:
    """`out` and its metadata files."""
    return [Path(out), *metadata_files(out)]


def input_paths(data: str | os.PathLike, direction_path: Any, settings: AnnotateSettings) -> list[Path]:
    """Every local file or folder an annotation reads: an output must not be (or be inside) one of them."""
    folders = direction_path if isinstance(direction_path, list) else [direction_path]
    paths = [Path(os.fspath(data)).expanduser(), *(Path(f) for f in folders if f is not None)]
    source = getattr(settings.binning, "source", None)
    if source:
        paths.append(Path(source))
    return paths


@contextlib.contextmanager
def guarded_output(out: str | os.PathLike, inputs: list[Path]) -> Iterator[None]:
    """Refuse an `out` that would destroy an input, then hold its lock and clear what an interrupted run left.

    Inside, this run is the only writer of `out` and its metadata files; afterwards only they remain.
    """
    check_outputs_spare_inputs(output_files(out)[:2], inputs)
    with output_lock(out):
        removed = remove_leftovers(output_files(out))
        for pending in metadata_files(out)[1:2]:
            if pending.exists():
                pending.unlink()
                removed.append(pending)
        if removed:
            log.warning("removed %d file(s) an interrupted run left: %s", len(removed), ", ".join(map(str, removed)))
        yield


# ---------------------------------------------------------------- resume: finished chunks on disk

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


# ---------------------------------------------------------------- the two passes


def margins_in_chunks(
    data: str | os.PathLike,
    directions: list[Direction],
    lm: Encoder,
    settings: AnnotateSettings,
    *,
    split: str = "train",
    limit: int | None = None,
    store: ChunkStore | None = None,
    scan: InputScan | None = None,
) -> tuple[list[MarginResult], str]:
    """Pass 1: raw margins of every row for each direction, chunk by chunk; returns them and the layout.

    The layout is `scan`'s (the cheap pass over every row, `scan_input`, made here when not given).
    With a `store`, chunks it holds are read instead of computed and each computed chunk is saved.
    A non-finite raw margin is a DataError naming its row.
    """
    source = str(data)
    start = time.perf_counter()
    if scan is None:
        scan = scan_input(data, settings.columns, settings.chunk_rows, split=split, limit=limit)
    layout = scan.layout
    per_chunk: list[list[MarginResult]] = []
    rows = 0
    chunks = iter_chunks(data, settings.chunk_rows, split=split, limit=limit, check_values=False)  # scan checked
    for index, chunk in enumerate(chunks):
        results = store.load(index, len(chunk), len(directions)) if store else None
        if results is None:
            views = chunk_views(chunk, layout, settings.columns, source, rows)
            try:
                results = chunk_margins(lm, views, directions, settings)
            except DataError as err:
                raise err.located(source, rows) from None
            check_finite(results, directions, source, rows)
            if store:
                store.save(index, results)
        else:
            check_finite(results, directions, source, rows)
        for result in results:
            result.differences = None  # on disk in the store: memory stays bounded by a chunk
        per_chunk.append(results)
        rows += len(chunk)
    first = [results[0] for results in per_chunk]
    forwards = [r.extra.get("forward_tokens") for r in first]
    totals: dict[str, Any] = dict(
        n_identical=sum(r.n_identical for r in first),
        n_truncated_texts=sum(r.n_truncated_texts for r in first),
        n_tokens=sum(r.n_tokens for r in first),
        n_answer_truncated=sum(r.n_answer_truncated for r in first),
        seconds=time.perf_counter() - start,
    )
    extra = {
        "forward_tokens": None if None in forwards else sum(int(f) for f in forwards if f is not None),
        "chunks": len(per_chunk),
        "chunks_reused": store.reused if store else 0,
    }
    margins = [
        MarginResult(raw=np.concatenate([results[i].raw for results in per_chunk]), extra=dict(extra), **totals)
        for i in range(len(directions))
    ]
    if settings.evidence == "labelled":
        for i, margin in enumerate(margins):
            margin.random_margins = np.concatenate([results[i].random_margins for results in per_chunk])
        margins[0].extra["length_diff"] = np.concatenate([results[0].extra["length_diff"] for results in per_chunk])
    return margins, layout


def original_records(data: str | os.PathLike, out: str | os.PathLike) -> Iterator[Any] | None:
    """The input's records as its file holds them, for an output of the same kind (JSON to JSON, CSV to CSV): the
    writer then writes each row back as it was (no `"key": null` for a missing key, every CSV cell's text kept)."""
    path = Path(os.fspath(data)).expanduser()
    if not path.is_file():
        return None
    kind, output = input_format(path), Path(out).suffix.lower()
    if kind == "json" and output in (".jsonl", ".json"):
        return json_records(path, str(data))
    if kind == "csv" and output == ".csv":
        return csv_records(path)
    return None


def input_schema(data: str | os.PathLike, out: str | os.PathLike, added: Sequence[str]) -> Any:
    """A Parquet input's own Arrow schema (less the columns legend writes), for a Parquet output to keep its
    types exactly (a dictionary column stays one); None otherwise."""
    path = Path(os.fspath(data)).expanduser()
    if Path(out).suffix.lower() != ".parquet" or not path.is_file() or input_format(path) != "parquet":
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return pa.schema([field for field in schema if field.name not in added])


def bins_origin(settings: AnnotateSettings) -> str:
    """Where the first direction's bin edges came from, as the summary says it."""
    if settings.binning is None:
        return f"fitted on this input ({settings.n_levels} levels)"
    source = getattr(settings.binning, "source", None)
    return f"loaded from {source or 'the given binning'} ({settings.binning.levels} levels)"


@contextlib.contextmanager
def sidecar_with(out: str | os.PathLike, sidecar: dict[str, Any]) -> Iterator[None]:
    """Write the metadata as pending, run the body (which writes `out`), then publish it: both or neither.

    Where the metadata goes is `legend.annotation.metadata_paths`: the JSON (made pending, then
    renamed) and the dataset card entry, written once the data is in place.
    """
    final = sidecar_path(out)
    pending = final.with_name(f".{final.name}.pending")
    created = make_parents(final.parent)  # `.legend/`, removed again if the run fails before anything is in it
    try:
        write_json(sidecar, pending)
        yield
        os.replace(pending, final)
    except BaseException:
        pending.unlink(missing_ok=True)
        remove_empty_folders(created)
        raise
    try:  # the output and its metadata are in place: nothing may fail the run now (the card was checked first)
        write_card(out, sidecar)
    except (DataError, OSError) as err:
        from ..io import os_error_message

        reason = os_error_message(err) if isinstance(err, OSError) else str(err)
        log.warning("warning: the dataset card was not updated (%s); %s and its metadata are written", reason, out)


def annotate_file_streamed(
    data: str | os.PathLike,
    direction: DirectionArg,
    out: str | os.PathLike,
    model: LoadedModel | ModelSpec | str | None = None,
    settings: AnnotateSettings | None = None,
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
    memory, a crash) leaves it for the next run. Returns an `Annotation` whose `dataset` is
    None (the rows went to `out`, not to memory).
    """
    settings = settings or AnnotateSettings()
    directions, direction_path = load_directions(direction)
    suffix = check_output_type(out)  # refuse an unknown output type before any work
    inputs = input_paths(data, direction_path, settings)
    check_outputs_spare_inputs(output_files(out)[:2], inputs)
    check_writable([out])  # under a file, read-only, full: now, not after the model ran
    check_card(out)  # an existing README.md legend could not update fails now, never after the output is in place
    # The cheap pass over every row (no model): bad data fails here, before the model loads.
    scan = scan_input(
        data,
        settings.columns,
        settings.chunk_rows,
        split=split,
        limit=limit,
        one_schema=suffix == ".parquet",
        output=out,
    )
    check_margin_columns(scan.columns, directions, settings.overwrite_margins, source=str(data))
    check_text_settings(directions, model, settings)
    settings = resolve_evidence(settings, scan.layout)
    with guarded_output(out, inputs):
        lm = load_encoder(settings.encoder, model, fallback=directions[0].model_id)
        for each in directions:
            each.check_compatible(lm)  # before any work folder appears
        store = None
        if resume or settings.keep_differences:  # kept differences wait in the store until they are written
            if not resume:
                shutil.rmtree(work_folder(out), ignore_errors=True)
            key = resume_key(data, directions, lm, settings, split=split, limit=limit, scan=scan)
            store = ChunkStore(work_folder(out), key)
        try:
            result = _annotate_in_two_passes(
                data, directions, direction_path, out, lm, settings, split, limit, store, scan
            )
        except (DataError, ValueError, FileNotFoundError):
            if store:
                store.remove()
            raise
        if store:
            store.remove()
    return result


def _annotate_in_two_passes(
    data: str | os.PathLike[str],
    directions: list[Direction],
    direction_path: Any,
    out: str | os.PathLike[str],
    lm: Encoder,
    settings: AnnotateSettings,
    split: str,
    limit: int | None,
    store: ChunkStore | None,
    scan: InputScan | None = None,
) -> Annotation:
    start = time.perf_counter()
    margins, layout = margins_in_chunks(
        data, directions, lm, settings, split=split, limit=limit, store=store, scan=scan
    )
    extra: dict[str, Any] = dict(engine="local", chunk_rows=settings.chunk_rows, bins=bins_origin(settings))
    if store and store.reused:
        log.warning(
            "resumed: %d finished chunk(s) of %d read from %s", store.reused, margins[0].extra["chunks"], store.folder
        )
    if store:
        extra["resume"] = {
            "work_folder": str(store.folder),
            "chunks_reused": store.reused,
            "chunks_computed": margins[0].extra["chunks"] - store.reused,
            "discarded_because": store.discarded,
        }
    if settings.keep_differences:
        extra["differences"] = str(differences_path(out))
    finished = finish_annotation(
        source=str(data),
        out=out,
        layout=layout,
        margins=margins,
        directions=directions,
        direction_path=direction_path,
        settings=settings,
        model=(lm.model_id, lm.dtype_name),
        seconds=time.perf_counter() - start,
        extra=extra,
    )
    if settings.evidence == "labelled":
        finished.summary["evidence"] = label_evidence(
            margins[0].raw,
            margins[0].extra["length_diff"],
            margins[0].random_margins,
            seed=settings.seed,
            labels=f"the {layout} layout's" if LAYOUTS[layout].labelled else "given (--evidence labelled)",
        )
    try:
        _write_outputs(data, out, directions, lm, settings, split, limit, store, margins, finished)
    except BaseException:
        differences_path(out).unlink(missing_ok=True)
        raise
    return finished.annotation()


def _write_outputs(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    directions: list[Direction],
    lm: Encoder,
    settings: AnnotateSettings,
    split: str,
    limit: int | None,
    store: ChunkStore | None,
    margins: list[MarginResult],
    finished: Finished,
) -> None:
    """Pass 2: the kept differences, then every row with its margin columns, and the metadata with them."""
    n_rows = len(margins[0].raw)
    if settings.keep_differences:
        assert store is not None  # kept differences always go through the store
        columns = [raw_name for raw_name, _ in margin_columns(directions)]
        write_differences_streamed(
            differences_path(out),
            columns,
            n_rows,
            lm.hidden_size,
            lambda k: store.differences(margins[0].extra["chunks"], k),
            {"model_fingerprint": lm.fingerprint, "output": Path(out).name},
        )
    added = [column for pair in margin_columns(directions) for column in pair]
    originals = original_records(data, out)
    like = input_schema(data, out, added)
    with sidecar_with(out, finished.document), ChunkWriter(out, like=like) as writer:
        for chunk in iter_chunks(data, settings.chunk_rows, split=split, limit=limit, check_values=False):
            rows = [next(originals) for _ in range(len(chunk))] if originals is not None else None
            writer.write(finished.columns(chunk, slice(writer.rows, writer.rows + len(chunk))), rows, added)
        if writer.rows != n_rows:
            raise DataError(
                f"the input changed while it was annotated ({n_rows} rows, then {writer.rows})", source=str(data)
            )
