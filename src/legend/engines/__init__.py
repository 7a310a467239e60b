"""Engines that run `legend annotate` on files: `local` (one process, streamed in chunks) and `ray` (Ray Data).

Both call the same margin step (`legend.margins.compute_margins_multi` -> `legend.encoding.encode`)
and build their columns, summary and sidecar with `legend.annotation`, so their outputs agree row
for row.
Ray itself is imported only when the Ray engine runs (it is an optional extra).
"""

from __future__ import annotations

import os

from ..annotation import AnnotateSettings, Annotation, DirectionArg
from ..models import LoadedModel, ModelSpec
from .local import annotate_file_streamed
from .ray_engine import annotate_file_ray  # imports ray only when called

ENGINES = ("local", "ray")


def run_engine(
    engine: str,
    data: str | os.PathLike[str],
    direction: DirectionArg,
    out: str | os.PathLike[str],
    model: LoadedModel | ModelSpec | str | None,
    settings: AnnotateSettings,
    *,
    split: str = "train",
    limit: int | None = None,
    num_workers: int | None = None,
    resume: bool = True,
) -> Annotation:
    """Annotate a file on the named engine (one direction, or a list of several).

    `resume` applies to the local engine; Ray re-runs its own failed tasks.
    """
    if engine == "local":
        return annotate_file_streamed(data, direction, out, model, settings, split=split, limit=limit, resume=resume)
    if engine == "ray":
        return annotate_file_ray(
            data, direction, out, model, settings, split=split, limit=limit, num_workers=num_workers or 2
        )
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
