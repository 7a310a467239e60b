"""The facade the CLI calls (layer 6): one function per job, each reading and checking its input before any
model loads. The jobs themselves live in their stages: `legend.induce.induce_file`,
`legend.selection.build_direction_from_file`, `legend.engines` (annotate_file), `legend.demo.run_demo`.
"""

from __future__ import annotations

import dataclasses
import os

from .annotation import (
    MARGIN_COLUMNS,
    SIDECAR_SUFFIX,
    AnnotateSettings,
    Annotation,
    DirectionArg,
    annotate,
    sidecar_path,
)
from .data import scan_input
from .demo import RECIPE_LINES, DemoSettings, run_demo
from .directions import Direction, DirectionSettings
from .engines import run_engine
from .induce import induce_file
from .io import check_output_type
from .models import LoadedModel, ModelSpec, as_loaded
from .selection import CachedDirection, build_direction_from_file, cached_recipe_direction

__all__ = [
    "MARGIN_COLUMNS",
    "RECIPE_LINES",
    "SIDECAR_SUFFIX",
    "AnnotateSettings",
    "Annotation",
    "DemoSettings",
    "DirectionSettings",
    "annotate",
    "annotate_file",
    "build_direction_from_file",
    "induce_file",
    "run_demo",
    "sidecar_path",
]


def annotate_file(
    data: str | os.PathLike[str],
    direction: DirectionArg | None,
    out: str | os.PathLike[str],
    model: LoadedModel | ModelSpec | str | None = None,
    settings: AnnotateSettings | None = None,
    *,
    split: str = "train",
    limit: int | None = None,
    engine: str = "local",
    num_workers: int | None = None,
    resume: bool = True,
) -> Annotation:
    """Annotate a file/folder/Hub dataset and write it to `out` (format from the extension) plus its metadata.

    Everything is written atomically; on any error nothing is left at `out`. The input is streamed
    in chunks of `settings.chunk_rows` rows (flat memory; the result's `dataset` is then None), with
    one direction or several (a list: one encoding pass, columns as in `annotate`). `resume` (local
    engine) keeps finished chunks in a work folder beside `out`, so a rerun after an interruption
    continues where it stopped. `engine` names an engine of `legend.engines.ENGINES` ("local", or
    "ray" with `num_workers` model actors).

    Without a direction (None), the model's recommended direction is used: read from the legend cache,
    or built once (`legend.selection.cached_recipe_direction`, after the input has been checked) and kept
    there; the summary's `direction_cache` says where and whether it was built.

    Args:
        data: a .jsonl/.json/.parquet/.csv file, a dataset folder, or a Hub dataset name.
        direction: a Direction, its folder or Hub id, or a list of them; None: the model's recommended one.
        out: the output file.
        model: a LoadedModel, a ModelSpec, a name, or None for the model the direction records.
        settings: the annotation's settings (bins, columns, chunking, encoding, encoder).
        split: the split of a dataset folder or Hub dataset.
        limit: annotate only the first `limit` rows.
        engine: the engine's name.
        num_workers: Ray's model actors.
        resume: continue from an interrupted run's finished chunks (local engine).

    Returns:
        An `Annotation` (its `dataset` is None: the rows went to `out`).

    >>> import json, tempfile, legend
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> rows = [{"prompt": f"Q{i}", "chosen": "No.", "rejected": f"Sure {i}."} for i in range(5)]
    >>> _ = (folder / "in.jsonl").write_text("".join(json.dumps(r) + chr(10) for r in rows))
    >>> lm = legend.tiny_model()
    >>> direction = legend.build_direction(lm, [legend.ContrastPair("Q?", "Sure.", "No.")] * 4, recipe="paper")
    >>> result = annotate_file(folder / "in.jsonl", direction, folder / "prefs" / "out.jsonl", lm)
    >>> result.summary["rows"], sorted(p.name for p in (folder / "prefs").iterdir())
    (5, ['.legend', 'README.md', 'out.jsonl'])
    """
    if isinstance(direction, (list, tuple)) and len(direction) == 1:
        direction = direction[0]
    settings = settings or AnnotateSettings()
    cached = None
    if direction is None or (isinstance(direction, (list, tuple)) and not direction):
        direction, model, cached = _recommended_direction(data, out, model, settings, split=split, limit=limit)
        if engine != "local" and isinstance(model, LoadedModel):
            model = ModelSpec(model.model_id)  # actors load their own copy
    annotation = run_engine(
        engine,
        data,
        direction,
        out,
        model,
        settings or AnnotateSettings(),
        split=split,
        limit=limit,
        num_workers=num_workers,
        resume=resume,
    )
    if cached is not None:
        annotation.summary["direction_cache"] = {"path": str(cached.path), "built": cached.built}
    return annotation


def _recommended_direction(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model: LoadedModel | ModelSpec | str | None,
    settings: AnnotateSettings,
    *,
    split: str,
    limit: int | None,
) -> tuple[Direction, LoadedModel, CachedDirection]:
    """The input checked (output type, every row), then the model loaded and its recommended direction."""
    check_output_type(out)
    scan_input(data, settings.columns, settings.chunk_rows, split=split, limit=limit)
    lm = as_loaded(model)
    encoding = dataclasses.replace(settings.encoding, max_length=None)
    cached = cached_recipe_direction(lm, encoding=encoding)
    return cached.direction, lm, cached
