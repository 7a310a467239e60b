"""The public API over the stages: induce pairs, build a direction, annotate a dataset, the demo.

Each function takes typed settings, does one job end to end, and returns a result object; the CLI
only parses options, calls one of these and prints the summary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .data import (
    ColumnNames,
    ContrastPair,
    DataError,
    PairView,
    detect_layout,
    load_table,
    pair_views,
    read_contrast_pairs,
    read_questions,
    write_json,  # the engines write sidecars through pipeline.write_json (tests replace it to simulate a failure)
    write_table,
)
from .directions import Direction, build_direction
from .induce import DEFAULT_REFUSALS, GenerationConfig, induce_pairs
from .encoding import SHARING_METHODS
from .margins import (
    DEFAULT_LEVELS,
    Binning,
    MarginResult,
    check_directions_agree,
    compute_margins_multi,
    describe,
)
from .models import LoadedModel, ModelSpec, as_loaded, load_model

MARGIN_COLUMNS = ("margin_raw", "margin")
SIDECAR_SUFFIX = ".legend.json"


def sidecar_path(out: str | os.PathLike) -> Path:
    """The JSON written next to an annotated file: `<out>.legend.json`."""
    return Path(str(out) + SIDECAR_SUFFIX)


# ---------------------------------------------------------------- annotation

@dataclass
class Annotation:
    """An annotated dataset with the binning used and a summary of what happened."""

    dataset: datasets.Dataset
    binning: Binning
    summary: dict[str, Any]
    margins: MarginResult
    # Directions after the first (primary) one: name -> {"binning": Binning, "margins": MarginResult}.
    secondary: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class AnnotateSettings:
    """Options of `annotate` (binning and batching). Created once at the edge, passed down."""

    levels: int = DEFAULT_LEVELS
    level_values: tuple[float, ...] | None = None
    binning: Binning | None = None          # re-use edges from an earlier run instead of fitting
    batch_size: int = 16
    max_batch_tokens: int = 16384
    max_length: int | None = None           # default: the direction's
    columns: ColumnNames = field(default_factory=ColumnNames)
    progress: bool = False
    prefix_sharing: bool = True             # run each pair's prompt once for both answers (same margins)
    sharing_method: str = "auto"            # how: "packed" rows, a KV "cache", or "auto" (EncodeConfig)
    chunk_rows: int = 4096                  # annotate_file streams the input in chunks of this many rows

    def __post_init__(self) -> None:
        # Refuse a bad method here, before any data is read or a model loaded.
        if self.sharing_method not in SHARING_METHODS:
            raise ValueError(f"unknown sharing_method {self.sharing_method!r}; choose from {', '.join(SHARING_METHODS)}")


def annotate_views(
    views: Sequence[PairView], direction: Direction, lm: LoadedModel, settings: AnnotateSettings = AnnotateSettings()
) -> tuple[np.ndarray, np.ndarray, Binning, MarginResult]:
    """Raw margins, binned margins and the binning for a list of pairs."""
    return annotate_views_multi(views, [direction], lm, settings)[0]


def annotate_views_multi(
    views: Sequence[PairView], directions: Sequence[Direction], lm: LoadedModel,
    settings: AnnotateSettings = AnnotateSettings(),
) -> list[tuple[np.ndarray, np.ndarray, Binning, MarginResult]]:
    """`annotate_views` for several directions from one encoding pass; each is binned with its own edges.

    `settings.binning` (edges re-used from an earlier run) applies to the first direction only.
    """
    results = compute_margins_multi(lm, views, directions, batch_size=settings.batch_size,
                                    max_batch_tokens=settings.max_batch_tokens, max_length=settings.max_length,
                                    progress=settings.progress, prefix_sharing=settings.prefix_sharing,
                                    sharing_method=settings.sharing_method)
    out = []
    for index, result in enumerate(results):
        fitted = settings.binning if index == 0 and settings.binning else None
        binning = fitted or Binning.fit(result.raw, settings.levels, settings.level_values)
        out.append((result.raw, binning.apply(result.raw), binning, result))
    return out


def _as_directions(direction: Any) -> list[Direction]:
    items = list(direction) if isinstance(direction, (list, tuple)) else [direction]
    if not items:
        raise ValueError("no direction given")
    return [d if isinstance(d, Direction) else Direction.load(d) for d in items]


def annotate(
    dataset: datasets.Dataset | str | os.PathLike,
    direction: Direction | str | os.PathLike | Sequence[Direction | str | os.PathLike],
    model: LoadedModel | ModelSpec | str | None = None,
    settings: AnnotateSettings = AnnotateSettings(),
    *,
    source: str | None = None,
) -> Annotation:
    """Add `margin_raw` and `margin` to every row of a preference dataset.

    `dataset` is a `datasets.Dataset` or anything `load_table` reads; `direction` a Direction or its
    folder; `model` a loaded model, a model spec, or None for the model the direction was built with.
    The layout (explicit / conversational / hh / pku / implicit) is detected unless columns are named.
    Several directions (a list) are applied in one encoding pass: the first fills `margin_raw`/`margin`,
    each other one `margin_raw_<name>`/`margin_<name>`, binned with its own edges.
    """
    directions = _as_directions(direction)
    direction = directions[0]
    if len(directions) > 1:
        check_directions_agree(directions)  # before reading data or loading the model
    if not isinstance(dataset, datasets.Dataset):
        source = source or str(dataset)
        dataset = load_table(dataset)
    source = source or "<dataset>"
    layout = detect_layout(dataset, settings.columns, source=source)
    views = pair_views(dataset, layout, settings.columns, source=source)
    # Only now load the model: bad input fails in a second, not after loading weights.
    lm = as_loaded(model, fallback=direction.model_id)
    start = time.perf_counter()
    per_direction = annotate_views_multi(views, directions, lm, settings)
    raw, binned, binning, result = per_direction[0]
    seconds = time.perf_counter() - start
    columns = list(MARGIN_COLUMNS) + [f"{c}_{d.name}" for d in directions[1:] for c in MARGIN_COLUMNS]
    annotated = dataset.remove_columns([c for c in columns if c in dataset.column_names])
    annotated = annotated.add_column("margin_raw", raw.tolist()).add_column("margin", binned.tolist())
    secondary = {}
    for other, (other_raw, other_binned, other_binning, other_result) in zip(directions[1:], per_direction[1:]):
        annotated = (annotated.add_column(f"margin_raw_{other.name}", other_raw.tolist())
                     .add_column(f"margin_{other.name}", other_binned.tolist()))
        secondary[other.name] = {"binning": other_binning, "margins": other_result, "direction": other,
                                 "margin_raw": describe(other_raw), "margin": describe(other_binned, other_binned)}
    from .engines.local import annotation_summary  # engines import this module: a late import

    summary = annotation_summary(source, layout, result, binning, direction, lm, seconds)
    if secondary:
        summary["other_directions"] = {
            name: {"columns": [f"margin_raw_{name}", f"margin_{name}"], "layer": info["direction"].layer,
                   "pooling": info["direction"].pooling, "estimator": info["direction"].estimator,
                   "margin_raw": info["margin_raw"], "margin": info["margin"]}
            for name, info in secondary.items()}
    return Annotation(dataset=annotated, binning=binning, summary=summary, margins=result, secondary=secondary)


def annotate_file(
    data: str | os.PathLike,
    direction: Direction | str | os.PathLike | Sequence[Direction | str | os.PathLike],
    out: str | os.PathLike,
    model: LoadedModel | ModelSpec | str | None = None,
    settings: AnnotateSettings = AnnotateSettings(),
    *,
    split: str = "train",
    limit: int | None = None,
    engine: str = "local",
    num_workers: int | None = None,
    resume: bool = True,
) -> Annotation:
    """Annotate a file/folder/Hub dataset and write it to `out` (format from the extension) plus a sidecar.

    Both files are written atomically; on any error nothing is left at `out`. The input is streamed
    in chunks of `settings.chunk_rows` rows (flat memory; the result's `dataset` is then None), with
    one direction or several (a list: one encoding pass, columns as in `annotate`). `resume` (local
    engine) keeps finished chunks in a work folder beside `out`, so a rerun after an interruption
    continues where it stopped. `engine="ray"` runs on Ray Data with `num_workers` model actors
    (see legend.engines).
    """
    from .engines import run_engine

    if isinstance(direction, (list, tuple)) and len(direction) == 1:
        direction = direction[0]
    return run_engine(engine, data, direction, out, model, settings, split=split, limit=limit,
                      num_workers=num_workers, resume=resume)


# ---------------------------------------------------------------- directions and pairs

def build_direction_from_file(
    pairs_file: str | os.PathLike,
    model: LoadedModel | ModelSpec | str | None = None,
    *,
    question: str = "question",
    harmful: str = "harmful",
    harmless: str = "harmless",
    drop_refused: bool = True,
    limit: int | None = None,
    select: str | None = None,
    select_on: str | os.PathLike | None = None,
    layer_stride: int = 1,
    dev_fraction: float = 0.5,
    **options: Any,
) -> tuple[Direction, dict[str, Any]]:
    """Read contrast pairs and build a direction; rows flagged `harmful_refused` are left out and counted.

    `select="auto"` sweeps layer/pooling/estimator (see legend.selection; explicit `layer`/`pooling`/
    `estimator` options fix that dimension), `select_on` a labelled preference file chooses by
    agreement with its labels on a dev split instead. Without either, unset options take the paper's
    defaults (last layer, last token, mean difference).
    """
    if select not in (None, "none", "auto"):
        raise ValueError(f"--select: expected 'auto' or 'none', got {select!r}")
    selecting = select == "auto" or select_on is not None
    preference_views = _preference_views(select_on) if select_on is not None else None
    if not selecting:
        options = {**options, **{k: v for k, v in (("layer", -1), ("pooling", "last"),
                                                   ("estimator", "mean_difference")) if options.get(k) is None}}
    pairs = read_contrast_pairs(pairs_file, question=question, harmful=harmful, harmless=harmless)
    n_read = len(pairs)
    refused = _refused_flags(pairs_file, n_read) if drop_refused else [False] * n_read
    pairs = [p for p, r in zip(pairs, refused) if not r]
    if limit is not None:
        pairs = pairs[:limit]
    lm = as_loaded(model)
    start = time.perf_counter()
    if selecting:
        from .selection import select_direction

        direction = select_direction(lm, pairs, layer_stride=layer_stride, select_on=preference_views,
                                     dev_fraction=dev_fraction, **options)
        if select_on is not None:
            direction.extra["selection"]["select_on"] = str(select_on)
    else:
        direction = build_direction(lm, pairs, **options)
    direction.extra.update(pairs_file=str(pairs_file), pairs_read=n_read, pairs_left_out_refused=int(sum(refused)))
    report = {"pairs_read": n_read, "left_out_refused": int(sum(refused)), "pairs_used": len(pairs),
              "seconds": round(time.perf_counter() - start, 3), "heldout": direction.heldout,
              "layer": direction.layer, "pooling": direction.pooling, "estimator": direction.estimator}
    if selecting:
        report["selection"] = {k: v for k, v in direction.extra["selection"].items() if k != "test_rows"}
        report["candidates"] = len(direction.extra["sweep"])
    return direction, report


def _preference_views(path: str | os.PathLike) -> list[PairView]:
    """Labelled preference pairs (any supported layout) for `--select-on`."""
    table = load_table(path)
    return pair_views(table, detect_layout(table, source=str(path)), source=str(path))


def _refused_flags(pairs_file: str | os.PathLike, n: int) -> list[bool]:
    table = load_table(pairs_file)
    if "harmful_refused" not in table.column_names:
        return [False] * n
    return [bool(v) for v in table["harmful_refused"]]


def induce_file(
    questions_file: str | os.PathLike,
    out: str | os.PathLike,
    model: LoadedModel | ModelSpec | str | None = None,
    *,
    column: str | None = None,
    prefill_column: str | None = None,
    refusals: Sequence[str] = DEFAULT_REFUSALS,
    limit: int | None = None,
    generation: GenerationConfig = GenerationConfig(),
) -> dict[str, Any]:
    """Generate contrast pairs for the questions in a file and write them (JSONL/Parquet/...) atomically."""
    questions = read_questions(questions_file, column)
    prefills = _read_column(questions_file, prefill_column, len(questions)) if prefill_column else None
    if limit is not None:
        questions = questions[:limit]
        prefills = prefills[:limit] if prefills is not None else None
    lm = as_loaded(model)
    start = time.perf_counter()
    pairs = induce_pairs(lm, questions, refusals=refusals, prefills=prefills, config=generation)
    rows = {"question": [p.question for p in pairs], "harmful": [p.harmful for p in pairs],
            "harmless": [p.harmless for p in pairs], "harmful_refused": [p.harmful_refused for p in pairs]}
    write_table(datasets.Dataset.from_dict(rows), out)
    return {"questions": len(questions), "pairs": len(pairs), "harmful_refused": int(sum(rows["harmful_refused"])),
            "seconds": round(time.perf_counter() - start, 3), "model_id": lm.model_id, "out": str(out)}


def _read_column(path: str | os.PathLike, column: str, n: int) -> list[str]:
    table = load_table(path)
    if column not in table.column_names:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(table.column_names)})")
    values = table[column]
    for row, value in enumerate(values, start=1):
        if not isinstance(value, str):
            raise DataError(f"{path}: row {row}: field {column!r}: expected a string, got {type(value).__name__}")
    return list(values[:n])


def contrast_pairs(questions: Sequence[str], harmful: Sequence[str], harmless: Sequence[str]) -> list[ContrastPair]:
    """Build contrast pairs from parallel lists (a convenience for library users)."""
    return [ContrastPair(question=q, harmful=h, harmless=s) for q, h, s in zip(questions, harmful, harmless)]


# ---------------------------------------------------------------- the demo

@dataclass(frozen=True)
class DemoSettings:
    """The main job on the bundled samples: induce -> direction -> annotate."""

    out_dir: Path = Path("runs/demo")
    model: str = "default"
    dtype: str = "bfloat16"
    questions: int = 64
    max_new_tokens: int = 48
    pairs: int = 200
    batch_size: int = 16
    progress: bool = True


def run_demo(settings: DemoSettings = DemoSettings()) -> dict[str, Any]:
    """Induce contrast pairs from AdvBench, build a direction, annotate the bundled hh-rlhf sample.

    Uses the paper's defaults (last layer, last token, mean difference) and AdvBench's `target`
    ("Sure, here is ...") as a prefill so the small aligned model answers instead of refusing.
    Returns a summary with the paths written and the timings.
    """
    from .resources import ADVBENCH, HH_RLHF_SAMPLE, sample_path

    start = time.perf_counter()
    out = Path(settings.out_dir)
    lm = load_model(settings.model, dtype=settings.dtype)
    loaded = time.perf_counter()
    pairs_path, direction_path, annotated_path = out / "pairs.jsonl", out / "direction", out / "hh_rlhf_annotated.jsonl"
    induced = induce_file(sample_path(ADVBENCH), pairs_path, lm, prefill_column="target", limit=settings.questions,
                          generation=GenerationConfig(max_new_tokens=settings.max_new_tokens,
                                                      batch_size=settings.batch_size, progress=settings.progress))
    direction, direction_report = build_direction_from_file(pairs_path, lm, batch_size=settings.batch_size,
                                                            progress=settings.progress)
    direction.save(direction_path)
    annotation = annotate_file(sample_path(HH_RLHF_SAMPLE), direction_path, annotated_path, lm,
                               AnnotateSettings(batch_size=settings.batch_size, progress=settings.progress),
                               limit=settings.pairs)
    return {
        "model_load_seconds": round(loaded - start, 3), "induce": induced, "direction": direction_report,
        "annotate": annotation.summary, "outputs": {"pairs": str(pairs_path), "direction": str(direction_path),
                                                    "annotated": str(annotated_path),
                                                    "sidecar": str(sidecar_path(annotated_path))},
        "total_seconds": round(time.perf_counter() - start, 3),
    }
