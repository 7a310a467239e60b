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

import dataclasses
import functools
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
)
from ..annotation.differences import differences_path, write_differences_streamed
from ..data import LAYOUTS, DataError, InputScan, PairView, chunk_views, iter_chunks, scan_input
from ..directions import Direction
from ..encoding import Encoder, load_encoder
from ..io import ChunkWriter, check_output_type, check_outputs_spare_inputs, check_writable
from ..margins import MarginResult, compute_margins_multi
from ..metrics import random_unit_directions
from ..models import LoadedModel, ModelSpec
from ..quality import label_evidence
from .outputs import guarded_output, input_paths, input_schema, original_records, output_files, sidecar_with
from .store import ChunkStore, resume_key, work_folder

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


def bins_origin(settings: AnnotateSettings) -> str:
    """Where the first direction's bin edges came from, as the summary says it."""
    if settings.binning is None:
        return f"fitted on this input ({settings.n_levels} levels)"
    source = getattr(settings.binning, "source", None)
    return f"loaded from {source or 'the given binning'} ({settings.binning.levels} levels)"


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
