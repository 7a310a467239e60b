"""`legend annotate --engine ray`: the same annotation on Ray Data, across cores, GPUs and machines.

Plan (two passes, like the local engine, because binning needs every raw margin):
1. read the input with Ray's readers (Parquet / JSON Lines / CSV, local or object store such as
   s3://, gs://; other sources go through `load_table` and `ray.data.from_huggingface`);
2. `map_batches` over a pool of `MarginActor`s: each loads the model once (a GPU each where the
   cluster has GPUs) and computes `margin_raw` for its batches with `compute_margins` -> `encode`,
   exactly the step the local engine runs; the result is materialised in Ray's object store;
3. the driver collects only the raw margins (8 bytes a row), fits the bin edges, and a second
   `map_batches` adds `margin`;
4. an output file (.jsonl/.json/.parquet/.csv) is written by the driver from the streamed batches
   with the same writer as the local engine, so both engines give the same file; an output with no
   suffix, or an object-store URI, is written by Ray's Parquet writer as a folder of shards.
Row order is kept (`preserve_order`), so output row i is input row i.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DataError, detect_layout, load_table
from ..directions import Direction
from ..margins import Binning, MarginResult, compute_margins
from ..models import LoadedModel, ModelSpec
from .local import ChunkWriter, annotation_summary, chunk_views, sidecar_document, sidecar_with

MARGIN_COLUMNS = ("margin_raw", "margin")


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
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
    """Loads the model once, then turns Arrow batches into batches with a `margin_raw` column."""

    def __init__(self, model: LoadedModel | ModelSpec | str, direction: Direction, settings: Any, layout: str,
                 source: str, threads: int | None = None) -> None:
        import torch

        from ..models import as_loaded

        if threads:
            torch.set_num_threads(threads)
        self.lm = as_loaded(model, fallback=direction.model_id)
        self.direction, self.settings, self.layout, self.source = direction, settings, layout, source

    def __call__(self, table):
        import datasets
        import pyarrow as pa

        table = table.drop_columns([c for c in MARGIN_COLUMNS if c in table.column_names])
        # Row numbers in errors count from the batch; Ray does not tell a batch its offset.
        views = chunk_views(datasets.Dataset(table), self.layout, self.settings.columns, self.source, 0)
        result = compute_margins(self.lm, views, self.direction, batch_size=self.settings.batch_size,
                                 max_batch_tokens=self.settings.max_batch_tokens, max_length=self.settings.max_length,
                                 prefix_sharing=self.settings.prefix_sharing)
        return table.append_column("margin_raw", pa.array(result.raw, type=pa.float64()))


def add_levels(table, binning: Binning):
    import pyarrow as pa

    raw = table.column("margin_raw").to_numpy()
    return table.append_column("margin", pa.array(binning.apply(raw), type=pa.float64()))


def annotate_file_ray(
    data: str | os.PathLike,
    direction: Direction | str | os.PathLike,
    out: str | os.PathLike,
    model: LoadedModel | ModelSpec | str | None = None,
    settings: Any = None,
    *,
    split: str = "train",
    limit: int | None = None,
    num_workers: int = 2,
):
    """`pipeline.annotate_file` on Ray Data with `num_workers` model actors; same output as the local engine.

    Connects to the cluster in RAY_ADDRESS (or an already initialised Ray), else starts a local one.
    Returns a `pipeline.Annotation` with `dataset` None.
    """
    ray = _require_ray()
    from ..pipeline import Annotation, AnnotateSettings

    settings = settings or AnnotateSettings()
    direction_path = None if isinstance(direction, Direction) else str(direction)
    if not isinstance(direction, Direction):
        direction = Direction.load(direction)
    out_name = os.fspath(out)
    to_folder = _is_uri(out_name) or not Path(out_name).suffix
    if not to_folder:
        ChunkWriter(out)  # refuse an unknown output type before any work
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = bool(settings.progress)
    start = time.perf_counter()

    ds = read_input(data, split)
    if limit is not None:
        ds = ds.limit(limit)
    first = ds.take_batch(64, batch_format="pyarrow")
    import datasets

    layout = detect_layout(datasets.Dataset(first), settings.columns, source=str(data))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = None if gpus else max(1, cpus // num_workers)
    # Leave a CPU for Ray's read and write tasks, or a small cluster deadlocks with every CPU held by an actor.
    actor_cpus = 0 if gpus else min(threads, max(cpus - 1, 1) / num_workers)
    scored = ds.map_batches(
        MarginActor, batch_size=settings.chunk_rows, batch_format="pyarrow",
        fn_constructor_kwargs=dict(model=model, direction=direction, settings=settings, layout=layout,
                                   source=str(data), threads=threads),
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_gpus=1 if gpus else 0, num_cpus=actor_cpus,
    ).materialize()
    raw = np.concatenate([batch["margin_raw"] for batch in
                          scored.select_columns(["margin_raw"]).iter_batches(batch_format="numpy")])
    binning = settings.binning or Binning.fit(raw, settings.levels, settings.level_values)
    # Identical chosen/rejected get exactly 0, so zero margins count them (a real margin is never exactly 0.0).
    margins = MarginResult(raw=raw, n_identical=int((raw == 0).sum()), n_truncated_texts=0, n_tokens=0,
                           seconds=time.perf_counter() - start,
                           extra={"engine": "ray", "workers": num_workers, "gpus": gpus})
    summary = annotation_summary(str(data), layout, margins, binning, direction,
                                 _summary_model(model, direction), time.perf_counter() - start,
                                 engine="ray", num_workers=num_workers)
    # Token and truncation counts stay in the actors; the summary says so instead of guessing.
    summary.update(truncated_texts=None, tokens=None, forward_tokens=None)
    final = scored.map_batches(add_levels, fn_kwargs={"binning": binning}, batch_format="pyarrow",
                               batch_size=settings.chunk_rows)
    sidecar = sidecar_document(data, out, direction_path, binning, settings, summary)
    if to_folder:
        final.write_parquet(out_name)
        if not _is_uri(out_name):
            with sidecar_with(out, sidecar):
                pass
    else:
        with sidecar_with(out, sidecar), ChunkWriter(out) as writer:
            for batch in final.iter_batches(batch_format="pyarrow", batch_size=settings.chunk_rows):
                writer.write(datasets.Dataset(batch))
            if writer.rows != len(raw):
                raise DataError(f"{writer.rows} rows written for {len(raw)} margins", source=str(out))
    return Annotation(dataset=None, binning=binning, summary=summary, margins=margins)


class _SummaryModel:
    """What the summary reads of a model (id and dtype) without loading it on the driver."""

    def __init__(self, model_id: str, dtype: str) -> None:
        import torch

        self.model_id = model_id
        self.model = torch.nn.Linear(1, 1, dtype=getattr(torch, {"bf16": "bfloat16"}.get(dtype, dtype)))


def _summary_model(model: Any, direction: Direction):
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, ModelSpec):
        return _SummaryModel(model.name or direction.model_id, model.dtype)
    return _SummaryModel(model or direction.model_id, "float32")
