"""`legend annotate --engine ray`: the same annotation on Ray Data, across cores, GPUs and machines.

Plan (two passes, like the local engine, because binning needs every raw margin):
1. read the input with Ray's readers (Parquet / JSON Lines / CSV, local or object store such as
   s3://, gs://; other sources go through `load_table` and `ray.data.from_huggingface`);
2. `map_batches` over a pool of `MarginActor`s: each loads the model once (a GPU each where the
   cluster has GPUs) and computes the raw margins of every direction for its batches with
   `chunk_margins` -> `encode`, exactly the step the local engine runs, plus the batch's token
   counts in `_legend_*` columns; the result is materialised in Ray's object store;
3. the driver collects only the raw margins (8 bytes a row and direction) and sums the counts, fits
   the bin edges, and a second `map_batches` adds the levels and drops the count columns;
4. an output file (.jsonl/.json/.parquet/.csv) is written by the driver from the streamed batches
   with the same writer as the local engine, so both engines give the same file; an output with no
   suffix, or an object-store URI, is written by Ray's Parquet writer as a folder of shards.
Row order is kept (`preserve_order`), so output row i is input row i.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..annotation import (
    AnnotateSettings,
    Annotation,
    DirectionArg,
    check_card,
    check_margin_columns,
    check_text_settings,
    finish_annotation,
    load_directions,
    margin_columns,
)
from ..annotation.differences import differences_path, write_differences_streamed
from ..data import LAYOUTS, DataError, chunk_views, detect_layout, load_table, scan_input
from ..directions import Direction
from ..encoding import load_encoder
from ..io import ChunkWriter, check_output_type, check_outputs_spare_inputs, check_writable
from ..margins import Binning, MarginResult
from ..models import LoadedModel, ModelSpec
from ..quality import label_evidence
from .local import chunk_margins, resolve_evidence
from .outputs import input_paths, original_records, output_files, sidecar_with

# Per-batch counts travel from the actors to the driver as columns: the batch's total sits on its
# first row and the other rows hold 0, so the driver's column sums equal the local engine's totals
# (forward tokens and truncations belong to a batch, not to a row). Dropped before writing.
COUNT_COLUMNS = (
    "_legend_identical",
    "_legend_truncated_texts",
    "_legend_tokens",
    "_legend_forward_tokens",
    "_legend_answer_truncated",
)


def _require_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError("--engine ray needs Ray Data: pip install 'legend[ray]' (or 'ray[data]')") from None
    return ray


def _is_uri(path: str) -> bool:
    return "://" in path


def read_input(data: str | os.PathLike, split: str = "train"):
    """A Ray Dataset over `data`: Ray's own readers for Parquet/JSONL/CSV files, folders and URIs."""
    import ray.data

    name = os.fspath(data)
    lowered = name.lower().rstrip("/")
    for suffix in (".gz", ".zst", ".br", ".lz4"):
        lowered = lowered.removesuffix(suffix)
    local = Path(name).expanduser()
    if not _is_uri(name) and not local.exists():
        return ray.data.from_huggingface(load_table(name, split=split))  # Hub names: load_table's errors
    if lowered.endswith(".parquet") or (local.is_dir() and any(local.glob("*.parquet"))):
        return ray.data.read_parquet(name)
    if lowered.endswith(".jsonl") or (local.is_dir() and any(local.glob("*.jsonl*"))):
        return ray.data.read_json(name, lines=True)
    if lowered.endswith(".csv"):
        return ray.data.read_csv(name)
    # .json lists, saved `datasets` folders: read through load_table (its checks and messages).
    return ray.data.from_huggingface(load_table(name, split=split))


class MarginActor:
    """Loads the model once, then turns Arrow batches into batches with each direction's raw margin and the counts."""

    def __init__(
        self,
        model: LoadedModel | ModelSpec | str,
        directions: list[Direction],
        settings: AnnotateSettings,
        layout: str,
        source: str,
        threads: int | None = None,
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.encoder = load_encoder(settings.encoder, model, fallback=directions[0].model_id)
        self.directions, self.settings, self.layout, self.source = directions, settings, layout, source
        self.columns = margin_columns(directions)

    def __call__(self, table):
        import datasets
        import pyarrow as pa

        table = table.drop_columns([c for pair in self.columns for c in pair if c in table.column_names])
        # Row numbers in errors count from the batch; Ray does not tell a batch its offset.
        views = chunk_views(datasets.Dataset(table), self.layout, self.settings.columns, self.source, 0)
        results = chunk_margins(self.encoder, views, self.directions, self.settings)
        for (raw_name, _), result in zip(self.columns, results):
            table = table.append_column(raw_name, pa.array(result.raw, type=pa.float64()))
        first = results[0]
        forward = first.extra.get("forward_tokens")
        counts = (
            first.n_identical,
            first.n_truncated_texts,
            first.n_tokens,
            -1 if forward is None else forward,
            first.n_answer_truncated,
        )
        for name, count in zip(COUNT_COLUMNS, counts):
            table = table.append_column(name, pa.array([count] + [0] * (table.num_rows - 1), type=pa.int64()))
        # What the same pass keeps besides the margins travels as extra columns, dropped before writing.
        for i, result in enumerate(results):
            if result.random_margins is not None:
                table = table.append_column(f"{RANDOM_PREFIX}{i}", _rows(pa, result.random_margins))
            if result.differences is not None:
                table = table.append_column(f"{DIFFERENCE_PREFIX}{i}", _rows(pa, result.differences))
        if "length_diff" in first.extra:
            table = table.append_column(LENGTH_COLUMN, pa.array(first.extra["length_diff"], type=pa.float64()))
        return table


RANDOM_PREFIX = "_legend_random_"
DIFFERENCE_PREFIX = "_legend_difference_"
LENGTH_COLUMN = "_legend_length_diff"


def _rows(pa, matrix):
    """A [rows, k] float matrix as a fixed-size-list float32 column."""
    import numpy as np

    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def _extra_columns(table) -> list[str]:
    return [c for c in table.column_names if c.startswith((RANDOM_PREFIX, DIFFERENCE_PREFIX)) or c == LENGTH_COLUMN]


def add_levels(table, binnings: list[Binning], columns: list[tuple[str, str]], order: list[str] | None = None):
    """Each direction's level column right after its raw one (as the local engine orders them); counts dropped.

    `order`: the input's columns; a margin column the input had (`overwrite_margins`) stays where it stood.
    """
    import pyarrow as pa

    raws = [table.column(raw_name) for raw_name, _ in columns]
    table = table.drop_columns([raw_name for raw_name, _ in columns] + list(COUNT_COLUMNS) + _extra_columns(table))
    for (raw_name, level_name), raw, binning in zip(columns, raws, binnings):
        table = table.append_column(raw_name, raw)
        table = table.append_column(level_name, pa.array(binning.apply(raw.to_numpy()), type=pa.float64()))
    if order:
        wanted = list(order) + [name for name in table.column_names if name not in order]
        table = table.select(wanted)
    return table


def annotate_file_ray(
    data: str | os.PathLike,
    direction: DirectionArg,
    out: str | os.PathLike,
    model: LoadedModel | ModelSpec | str | None = None,
    settings: AnnotateSettings | None = None,
    *,
    split: str = "train",
    limit: int | None = None,
    num_workers: int = 2,
) -> Annotation:
    """`pipeline.annotate_file` on Ray Data with `num_workers` model actors; same output as the local engine.

    `direction` is one direction or a list of several (one encoding pass; columns as the local engine).
    Connects to the cluster in RAY_ADDRESS (or an already initialised Ray), else starts a local one.
    Returns a `pipeline.Annotation` with `dataset` None.
    """
    ray = _require_ray()
    settings = settings or AnnotateSettings()
    directions, direction_path = load_directions(direction)
    columns = margin_columns(directions)
    out_name = os.fspath(out)
    to_folder = _is_uri(out_name) or not Path(out_name).suffix
    if not to_folder:
        check_output_type(out)  # refuse an unknown output type before any work
        check_outputs_spare_inputs(output_files(out)[:2], input_paths(data, direction_path, settings))
        check_writable([out])
        check_card(out)
    layout = None
    if not _is_uri(str(data)) and Path(os.fspath(data)).expanduser().exists():
        # Local input: the cheap pass over every row (as the local engine), before Ray starts.
        scan = scan_input(
            data,
            settings.columns,
            settings.chunk_rows,
            split=split,
            limit=limit,
            output=None if to_folder else out,
            one_schema=not to_folder and Path(out_name).suffix.lower() == ".parquet",
        )
        layout = scan.layout
        check_margin_columns(scan.columns, directions, settings.overwrite_margins, source=str(data))
        settings = resolve_evidence(settings, layout)
    check_text_settings(directions, model, settings)
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = bool(settings.encoding.progress)
    start = time.perf_counter()

    ds = read_input(data, split)
    if limit is not None:
        ds = ds.limit(limit)
    first = ds.take_batch(64, batch_format="pyarrow")
    import datasets

    if layout is None:  # remote input: decided on a sample
        layout = detect_layout(datasets.Dataset(first), settings.columns, source=str(data))
        check_margin_columns(first.column_names, directions, settings.overwrite_margins, source=str(data))
        settings = resolve_evidence(settings, layout)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = None if gpus else max(1, cpus // num_workers)
    # Leave a CPU for Ray's read and write tasks, or a small cluster deadlocks with every CPU held by an actor.
    actor_cpus = 0 if gpus else min(threads or 1, max(cpus - 1, 1) / num_workers)
    scored = ds.map_batches(
        MarginActor,
        batch_size=settings.chunk_rows,
        batch_format="pyarrow",
        fn_constructor_kwargs=dict(
            model=model, directions=directions, settings=settings, layout=layout, source=str(data), threads=threads
        ),
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_gpus=1 if gpus else 0,
        num_cpus=actor_cpus,
    ).materialize()
    labelled = settings.evidence == "labelled"
    wanted = [raw_name for raw_name, _ in columns]
    collected = _collect(scored, wanted + ([LENGTH_COLUMN] if labelled else []))
    raws = [collected[raw_name] for raw_name, _ in columns]
    counts = {name: int(collected[name].sum()) for name in COUNT_COLUMNS}
    forward_known = bool((collected["_legend_forward_tokens"] >= 0).all())
    seconds = time.perf_counter() - start
    margins = [
        MarginResult(
            raw=raw,
            n_identical=counts["_legend_identical"],
            n_truncated_texts=counts["_legend_truncated_texts"],
            n_tokens=counts["_legend_tokens"],
            n_answer_truncated=counts["_legend_answer_truncated"],
            seconds=seconds,
            extra={
                "engine": "ray",
                "workers": num_workers,
                "gpus": gpus,
                "forward_tokens": counts["_legend_forward_tokens"] if forward_known else None,
            },
        )
        for raw in raws
    ]
    finished = finish_annotation(
        source=str(data),
        out=out,
        layout=layout,
        margins=margins,
        directions=directions,
        direction_path=direction_path,
        settings=settings,
        model=_summary_model(model, directions[0]),
        seconds=seconds,
        extra={"engine": "ray", "num_workers": num_workers},
    )
    if labelled:
        random = _collect_matrix(scored, f"{RANDOM_PREFIX}0")
        finished.summary["evidence"] = label_evidence(
            raws[0],
            collected[LENGTH_COLUMN],
            random,
            seed=settings.seed,
            labels=f"the {layout} layout's" if LAYOUTS[layout].labelled else "given (--evidence labelled)",
        )
    if settings.keep_differences and not to_folder:
        finished.summary["differences"] = str(differences_path(out))
        hidden = directions[0].hidden_size
        write_differences_streamed(
            differences_path(out),
            wanted,
            len(raws[0]),
            hidden,
            lambda k: _iter_matrix(scored, f"{DIFFERENCE_PREFIX}{k}", settings.chunk_rows),
            {"output": Path(out).name},
        )
    final = scored.map_batches(
        add_levels,
        fn_kwargs={"binnings": finished.binnings, "columns": columns, "order": list(first.column_names)},
        batch_format="pyarrow",
        batch_size=settings.chunk_rows,
    )
    sidecar = finished.document
    if to_folder:
        final.write_parquet(out_name)
        if not _is_uri(out_name):
            with sidecar_with(out, sidecar):
                pass
    else:
        added = [column for pair in columns for column in pair]
        originals = original_records(data, out)  # JSON/CSV rows written back as the input file holds them
        with sidecar_with(out, sidecar), ChunkWriter(out) as writer:
            for batch in final.iter_batches(batch_format="pyarrow", batch_size=settings.chunk_rows):
                rows = [next(originals) for _ in range(batch.num_rows)] if originals is not None else None
                writer.write(datasets.Dataset(batch), rows, added)
            if writer.rows != len(raws[0]):
                raise DataError(f"{writer.rows} rows written for {len(raws[0])} margins", source=str(out))
    return finished.annotation()


def _collect(scored, raw_columns: list[str]) -> dict[str, np.ndarray]:
    """The raw margin and count columns, whole, on the driver (8 bytes a row each)."""
    wanted = raw_columns + list(COUNT_COLUMNS)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    for batch in scored.select_columns(wanted).iter_batches(batch_format="numpy"):
        for name in wanted:
            parts[name].append(batch[name])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _iter_matrix(scored, column: str, batch_size: int):
    """A fixed-size-list column as [rows, k] float32 blocks, in row order."""
    for batch in scored.select_columns([column]).iter_batches(batch_format="pyarrow", batch_size=batch_size):
        values = batch.column(column).combine_chunks()
        yield values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), values.type.list_size)


def _collect_matrix(scored, column: str) -> np.ndarray:
    """A fixed-size-list column, whole, on the driver."""
    return np.concatenate(list(_iter_matrix(scored, column, 4096))).astype(np.float64)


def _summary_model(model: LoadedModel | ModelSpec | str | None, direction: Direction) -> tuple[str, str]:
    """(model id, dtype name) for the summary, without loading the model on the driver."""
    if isinstance(model, LoadedModel):
        return model.model_id, model.dtype_name
    if isinstance(model, ModelSpec):
        return model.name or direction.model_id, {"bf16": "bfloat16", "fp32": "float32"}.get(model.dtype, model.dtype)
    return model or direction.model_id, "float32"
