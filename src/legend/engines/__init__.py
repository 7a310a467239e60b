"""Engines that run `legend annotate` on files (an extension point): `local` (one process, streamed in chunks,
resumable) and `ray` (Ray Data actors).

Every engine computes margins with `legend.margins.compute_margins_multi` through an `Encoder`, and
ends with `legend.annotation.finish_annotation`, so their outputs agree row for row. An engine is a
function with `EngineFn`'s signature registered with `register_engine`; `--engine` offers it and its
help is generated from `ENGINES`. Ray itself is imported only when the Ray engine runs (an optional extra).
"""

from __future__ import annotations

import os
from typing import Protocol

from ..annotation import AnnotateSettings, Annotation, DirectionArg
from ..models import LoadedModel, ModelSpec
from ..registries import ENGINES
from .local import annotate_file_streamed
from .ray_engine import annotate_file_ray  # imports ray only when called


class EngineFn(Protocol):
    """How an engine is called: annotate `data` with `direction` into `out` (plus its metadata)."""

    def __call__(
        self,
        data: str | os.PathLike[str],
        direction: DirectionArg,
        out: str | os.PathLike[str],
        model: LoadedModel | ModelSpec | str | None,
        settings: AnnotateSettings,
        *,
        split: str,
        limit: int | None,
        num_workers: int | None,
        resume: bool,
    ) -> Annotation: ...


def register_engine(name: str, engine: EngineFn, *, description: str | None = None, replace: bool = False) -> EngineFn:
    """Make `engine` available as `legend annotate --engine NAME` and `annotate_file(engine=NAME)`.

    Args:
        name: the engine's name.
        engine: a function with `EngineFn`'s signature.
        description: one line for help texts.
        replace: replace an existing engine of that name.

    Returns:
        `engine`.

    >>> from pathlib import Path
    >>> def logged(data, direction, out, model, settings, **options):  # the local engine, saying so
    ...     print("annotating", Path(data).name)
    ...     return ENGINES["local"](data, direction, out, model, settings, **options)
    >>> _ = register_engine("logged", logged, description="the local engine, logging each input")
    >>> "logged" in ENGINES.choices()
    True
    >>> _ = ENGINES.unregister("logged")
    """
    return ENGINES.register(name, engine, description=description, replace=replace)


def _local(data, direction, out, model, settings, *, split, limit, num_workers, resume):
    return annotate_file_streamed(data, direction, out, model, settings, split=split, limit=limit, resume=resume)


def _ray(data, direction, out, model, settings, *, split, limit, num_workers, resume):
    return annotate_file_ray(
        data, direction, out, model, settings, split=split, limit=limit, num_workers=num_workers or 2
    )


register_engine("local", _local)  # described in legend.registries
register_engine("ray", _ray)


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
    return ENGINES[engine](
        data, direction, out, model, settings, split=split, limit=limit, num_workers=num_workers, resume=resume
    )
