"""The facade the CLI calls (layer 6): one function per job, each reading and checking its input before any
model loads. The jobs themselves live in their stages: `legend.induce.induce_file`,
`legend.selection.build_direction_from_file`, `legend.engines` (annotate_file), `legend.demo.run_demo`.
"""

from __future__ import annotations

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
from .demo import RECIPE_LINES, DemoSettings, run_demo
from .directions import DirectionSettings
from .engines import run_engine
from .induce import induce_file
from .models import LoadedModel, ModelSpec
from .selection import build_direction_from_file

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
    direction: DirectionArg,
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

    Args:
        data: a .jsonl/.json/.parquet/.csv file, a dataset folder, or a Hub dataset name.
        direction: a Direction, its folder or Hub id, or a list of them.
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
    """
    if isinstance(direction, (list, tuple)) and len(direction) == 1:
        direction = direction[0]
    return run_engine(
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
