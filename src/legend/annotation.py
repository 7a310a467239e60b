"""Annotation as a stage: its settings, its result, the columns it adds, its summary and its sidecar.

Both engines (legend.engines) and the in-memory `annotate` build their outputs from the functions
here, so the columns, the summary keys and the sidecar are defined once.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from . import __version__
from .data import ColumnNames, PairView, detect_layout, load_table, pair_views
from .directions import Direction
from .encoding import EncodeConfig
from .margins import DEFAULT_LEVELS, Binning, MarginResult, check_directions_agree, compute_margins_multi, describe
from .models import LoadedModel, ModelSpec, as_loaded

MARGIN_COLUMNS = ("margin_raw", "margin")
# One direction (an object or its folder) or several, as `annotate` and the engines take them.
DirectionArg = Direction | str | os.PathLike[str] | Sequence[Direction | str | os.PathLike[str]]
SIDECAR_SUFFIX = ".legend.json"
DEFAULT_CHUNK_ROWS = 4096
BINNING_RULE = "raw <= 0 -> lowest level; positive raw margins split into levels-1 equal-count groups"


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    """The JSON written next to an annotated file: `<out>.legend.json`.

    >>> str(sidecar_path("runs/train.jsonl"))
    'runs/train.jsonl.legend.json'
    """
    return Path(str(out) + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class AnnotateSettings:
    """Options of `annotate`: binning, columns, chunking, and the encoding settings (batching, sharing).

    Created once at the edge (CLI or API call), validated here, passed down, and saved in the
    sidecar. `encoding.max_length` None means the direction's; its layers, poolings and template are
    always the direction's.
    """

    levels: int = DEFAULT_LEVELS
    level_values: tuple[float, ...] | None = None
    binning: Binning | None = None  # re-use edges from an earlier run instead of fitting
    columns: ColumnNames = field(default_factory=ColumnNames)
    chunk_rows: int = DEFAULT_CHUNK_ROWS  # the file engines stream the input in chunks of this many rows
    encoding: EncodeConfig = field(default_factory=EncodeConfig)

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ValueError("levels must be at least 1")
        if self.level_values is not None and len(self.level_values) != self.levels:
            raise ValueError(f"{len(self.level_values)} level values given for {self.levels} levels")
        if self.chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        """What the sidecar records of these settings."""
        data = dataclasses.asdict(self)
        data["binning"] = self.binning.to_dict() if self.binning else None
        data["encoding"] = {
            k: v
            for k, v in dataclasses.asdict(self.encoding).items()
            if k not in ("layers", "poolings", "template", "description")
        }
        return data


@dataclass
class Annotation:
    """An annotated dataset with the binning used and a summary of what happened.

    `dataset` is None when the rows went to a file rather than to memory (`annotate_file`).
    """

    dataset: datasets.Dataset | None
    binning: Binning
    summary: dict[str, Any]
    margins: MarginResult
    # Directions after the first (primary) one: name -> {"binning", "margins", "direction", ...}.
    secondary: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------- directions, columns, bins


def load_directions(direction: DirectionArg) -> tuple[list[Direction], Any]:
    """Directions (one, or a list) loaded from folders where needed, and their paths as the sidecar records them."""
    items: list[Any] = list(direction) if isinstance(direction, (list, tuple)) else [direction]
    if not items:
        raise ValueError("no direction given")
    paths = [None if isinstance(d, Direction) else str(d) for d in items]
    directions = [d if isinstance(d, Direction) else Direction.load(d) for d in items]
    if len(directions) > 1:
        check_directions_agree(directions)
    return directions, paths if isinstance(direction, (list, tuple)) and len(items) > 1 else paths[0]


def margin_columns(directions: Sequence[Direction]) -> list[tuple[str, str]]:
    """(raw column, level column) per direction: `margin_raw`/`margin`, then `margin_raw_<name>`/`margin_<name>`."""
    return [MARGIN_COLUMNS] + [(f"margin_raw_{d.name}", f"margin_{d.name}") for d in directions[1:]]


def with_margins(
    chunk: datasets.Dataset, raws: Sequence[np.ndarray], binnings: Sequence[Binning], directions: Sequence[Direction]
) -> datasets.Dataset:
    """The rows with each direction's raw and binned margin columns (replacing any columns of those names)."""
    names = margin_columns(directions)
    chunk = chunk.remove_columns([c for pair in names for c in pair if c in chunk.column_names])
    for (raw_name, level_name), raw, binning in zip(names, raws, binnings):
        chunk = chunk.add_column(raw_name, raw.tolist()).add_column(level_name, binning.apply(raw).tolist())
    return chunk


def fit_binnings(raws: Sequence[np.ndarray], settings: AnnotateSettings) -> list[Binning]:
    """Each direction's own bin edges; edges given in `settings.binning` apply to the first direction only."""
    return [
        settings.binning if i == 0 and settings.binning else Binning.fit(raw, settings.levels, settings.level_values)
        for i, raw in enumerate(raws)
    ]


# ---------------------------------------------------------------- summary and sidecar


def annotation_summary(
    source: str,
    layout: str,
    margins: MarginResult,
    binning: Binning,
    direction: Direction,
    model: tuple[str, str],
    seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """The summary `legend annotate` prints and stores in the sidecar; `model` is (model id, dtype name)."""
    raw = margins.raw
    binned = binning.apply(raw)
    return {
        "source": source,
        "rows": int(raw.size),
        "layout": layout,
        "identical_pairs": margins.n_identical,
        "truncated_texts": margins.n_truncated_texts,
        "tokens": margins.n_tokens,
        "forward_tokens": margins.extra.get("forward_tokens"),
        "seconds": round(seconds, 3),
        "pairs_per_second": round(raw.size / seconds, 3) if seconds > 0 else None,
        "margin_raw": describe(raw),
        "margin": describe(binned, binned),
        "direction": {
            "name": direction.name,
            "model_id": direction.model_id,
            "layer": direction.layer,
            "pooling": direction.pooling,
            "estimator": direction.estimator,
            "fingerprint": direction.fingerprint,
        },
        "model_id": model[0],
        "dtype": model[1],
        **extra,
    }


def other_directions_summary(
    directions: Sequence[Direction], raws: Sequence[np.ndarray], binnings: Sequence[Binning]
) -> dict[str, Any]:
    """The summary's `other_directions` (directions after the first)."""
    summary = {}
    for direction, raw, binning, (raw_name, level_name) in zip(
        directions[1:], raws[1:], binnings[1:], margin_columns(directions)[1:]
    ):
        binned = binning.apply(raw)
        summary[direction.name] = {
            "columns": [raw_name, level_name],
            "layer": direction.layer,
            "pooling": direction.pooling,
            "estimator": direction.estimator,
            "margin_raw": describe(raw),
            "margin": describe(binned, binned),
        }
    return summary


def secondary_of(
    directions: Sequence[Direction], margins: Sequence[MarginResult], binnings: Sequence[Binning]
) -> dict[str, dict[str, Any]]:
    """`Annotation.secondary` for the directions after the first."""
    return {
        d.name: {
            "binning": b,
            "margins": m,
            "direction": d,
            "margin_raw": describe(m.raw),
            "margin": describe(b.apply(m.raw), b.apply(m.raw)),
        }
        for d, m, b in zip(directions[1:], margins[1:], binnings[1:])
    }


def sidecar_document(
    data: Any,
    out: Any,
    direction_path: Any,
    binning: Binning,
    settings: AnnotateSettings,
    summary: dict[str, Any],
    others: dict[str, Binning] | None = None,
) -> dict[str, Any]:
    """The machine-readable metadata of an annotated file (bin edges, summary, settings).

    `others`: name -> Binning of the directions after the first (`other_binnings`, with their columns).
    """
    document: dict[str, Any] = {
        "legend_version": __version__,
        "output": str(out),
        "input": str(data),
        "direction_path": direction_path,
        "binning": binning.to_dict(),
        "binning_rule": BINNING_RULE,
        "binning_source": "loaded" if settings.binning else "fitted",
        "summary": summary,
    }
    if others:
        document["other_binnings"] = {
            name: {"columns": [f"margin_raw_{name}", f"margin_{name}"], **b.to_dict()} for name, b in others.items()
        }
    return document


# ---------------------------------------------------------------- in memory


def annotate(
    dataset: datasets.Dataset | str | os.PathLike[str],
    direction: DirectionArg,
    model: LoadedModel | ModelSpec | str | None = None,
    settings: AnnotateSettings | None = None,
    *,
    source: str | None = None,
) -> Annotation:
    """Add `margin_raw` and `margin` to every row of a preference dataset held in memory.

    `dataset` is a `datasets.Dataset` or anything `load_table` reads; `direction` a Direction or its
    folder; `model` a loaded model, a model spec, or None for the model the direction was built with.
    The layout (explicit / conversational / hh / pku / implicit) is detected unless columns are named.
    Several directions (a list) are applied in one encoding pass: the first fills `margin_raw`/`margin`,
    each other one `margin_raw_<name>`/`margin_<name>`, binned with its own edges.
    """
    settings = settings or AnnotateSettings()
    directions, _ = load_directions(direction)  # checked before reading data or loading the model
    if not isinstance(dataset, datasets.Dataset):
        source = source or str(dataset)
        dataset = load_table(dataset)
    source = source or "<dataset>"
    layout = detect_layout(dataset, settings.columns, source=source)
    views: list[PairView] = pair_views(dataset, layout, settings.columns, source=source)
    # Only now load the model: bad input fails in a second, not after loading weights.
    lm = as_loaded(model, fallback=directions[0].model_id)
    start = time.perf_counter()
    results = compute_margins_multi(lm, views, directions, settings.encoding)
    raws = [r.raw for r in results]
    binnings = fit_binnings(raws, settings)
    seconds = time.perf_counter() - start
    summary = annotation_summary(
        source, layout, results[0], binnings[0], directions[0], (lm.model_id, lm.dtype_name), seconds
    )
    if len(directions) > 1:
        summary["other_directions"] = other_directions_summary(directions, raws, binnings)
    return Annotation(
        dataset=with_margins(dataset, raws, binnings, directions),
        binning=binnings[0],
        summary=summary,
        margins=results[0],
        secondary=secondary_of(directions, results, binnings),
    )
