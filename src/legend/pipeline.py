"""The public API: a thin facade over the stages (induce pairs, build a direction, annotate, the demo).

Each function takes the stage's settings object, does one job end to end (reading and checking
the input before any model is loaded), and returns a result object; the CLI only parses options,
calls one of these and prints the summary. Everything here imports downwards only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .annotation import (
    MARGIN_COLUMNS,
    SIDECAR_SUFFIX,
    AnnotateSettings,
    Annotation,
    DirectionArg,
    annotate,
    annotation_summary,
    fit_binnings,
    other_directions_summary,
    sidecar_document,
    sidecar_path,
    with_margins,
)
from .data import DataError, PairView, detect_layout, load_table, pair_views, read_contrast_pairs, read_questions
from .directions import Direction, DirectionSettings, build_direction
from .encoding import EncodeConfig
from .engines import run_engine
from .induce import HARMLESS_SOURCES, GenerationConfig, induce_pairs
from .io import write_json, write_table
from .margins import compute_margins_multi
from .models import LoadedModel, ModelSpec, as_loaded, load_model
from .quality import (
    DEFAULT_RANDOM_DIRECTIONS,
    differences_path,
    evaluate_margins,
    random_floor,
    write_differences,
)
from .report import build_report
from .resources import ADVBENCH, HH_RLHF_SAMPLE, sample_path
from .selection import (
    DEFAULT_RECIPE,
    PAPER_RECIPE,
    RECIPES,
    recipe_direction,
    recipe_settings,
    saturation_warning,
    select_direction,
)

__all__ = [
    "MARGIN_COLUMNS",
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


# ---------------------------------------------------------------- annotation


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
    continues where it stopped. `engine="ray"` runs on Ray Data with `num_workers` model actors
    (see legend.engines).
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


# ---------------------------------------------------------------- directions


def build_direction_from_file(
    pairs_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    model: LoadedModel | ModelSpec | str | None = None,
    settings: DirectionSettings | None = None,
    *,
    question: str = "question",
    harmful: str = "harmful",
    harmless: str = "harmless",
    drop_refused: bool = True,
    limit: int | None = None,
    select_on: str | os.PathLike[str] | None = None,
) -> tuple[Direction, dict[str, Any]]:
    """Read contrast pairs (one file or several, mixed) and build a direction.

    Rows flagged `harmful_refused` (the model refused instead of answering) or `harmless_not_refusal`
    (a self-written harmless answer that is not a refusal) by `legend induce` are left out and
    counted. Several files (e.g. induced pairs and bring-your-own pairs) are concatenated in order;
    the source of each pair (file, first row, count) is recorded in the direction's config
    (`extra.pair_sources`). `limit` applies to each file.

    `settings.select="auto"` sweeps layer/pooling/estimator (see legend.selection; the ones set in
    `settings` stay fixed), `select_on` a labelled preference file chooses by agreement with its
    labels on a dev split instead. Otherwise unset options take the paper's defaults (last layer,
    last token, mean difference). The pairs (and `select_on`) are read and checked before the
    model is loaded. A held-out separation that saturates is warned about (`report["warnings"]`,
    stored in `extra.warnings`): it is no evidence that the margins mean anything.
    """
    settings = settings or DirectionSettings()
    files = [pairs_file] if isinstance(pairs_file, (str, os.PathLike)) else list(pairs_file)
    if not files:
        raise ValueError("no contrast pair file given")
    selecting = settings.selecting or select_on is not None
    preference_views = _preference_views(select_on) if select_on is not None else None
    pairs: list[Any] = []
    sources: list[dict[str, Any]] = []
    n_read = left_refused = left_not_refusal = 0
    for path in files:
        read = read_contrast_pairs(path, question=question, harmful=harmful, harmless=harmless)
        refused, not_refusal = _flags(path, len(read))
        keep = [p for p, r, nr in zip(read, refused, not_refusal) if not drop_refused or not (r or nr)]
        if limit is not None:
            keep = keep[:limit]
        sources.append(
            {
                "file": str(path),
                "first": len(pairs),
                "count": len(keep),
                "read": len(read),
                "left_out_refused": int(sum(refused)) if drop_refused else 0,
                "left_out_not_refusal": int(sum(nr and not r for r, nr in zip(refused, not_refusal)))
                if drop_refused
                else 0,
            }
        )
        pairs.extend(keep)
        n_read += len(read)
        left_refused += sources[-1]["left_out_refused"]
        left_not_refusal += sources[-1]["left_out_not_refusal"]
    if len(pairs) < 2:
        raise DataError(
            f"need at least 2 contrast pairs to build a direction, got {len(pairs)}"
            + (
                f" ({left_refused + left_not_refusal} flagged pairs left out)"
                if left_refused + left_not_refusal
                else ""
            ),
            source=", ".join(str(f) for f in files),
        )
    lm = as_loaded(model)
    start = time.perf_counter()
    if selecting:
        # Two or more files: validate each source with a direction fitted on the others (cross-source).
        groups = [src["file"] for src in sources for _ in range(src["count"])] if len(files) > 1 else None
        direction = select_direction(lm, pairs, settings, select_on=preference_views, groups=groups)
        if select_on is not None:
            direction.extra["selection"]["select_on"] = str(select_on)
    else:
        direction = build_direction(lm, pairs, settings)
    warning = saturation_warning(direction.heldout)
    direction.extra.update(
        pairs_file=str(files[0]) if len(files) == 1 else [str(f) for f in files],
        pair_sources=sources,
        pairs_read=n_read,
        pairs_left_out_refused=left_refused,
        pairs_left_out_not_refusal=left_not_refusal,
        warnings=[warning] if warning else [],
    )
    report = {
        "pairs_read": n_read,
        "left_out_refused": left_refused,
        "left_out_not_refusal": left_not_refusal,
        "pairs_used": len(pairs),
        "sources": sources,
        "seconds": round(time.perf_counter() - start, 3),
        "heldout": direction.heldout,
        "layer": direction.layer,
        "pooling": direction.pooling,
        "estimator": direction.estimator,
        "warnings": direction.extra["warnings"],
    }
    if selecting:
        report["selection"] = {k: v for k, v in direction.extra["selection"].items() if k != "test_rows"}
        report["candidates"] = len(direction.extra["sweep"])
    return direction, report


def _preference_views(path: str | os.PathLike[str]) -> list[PairView]:
    """Labelled preference pairs (any supported layout) for `--select-on`."""
    table = load_table(path)
    return pair_views(table, detect_layout(table, source=str(path)), source=str(path))


def _flags(pairs_file: str | os.PathLike[str], n: int) -> tuple[list[bool], list[bool]]:
    """The `harmful_refused` and `harmless_not_refusal` flags of `legend induce` (all False when absent)."""
    table = load_table(pairs_file)
    return tuple(  # type: ignore[return-value]
        [bool(v) for v in table[column]] if column in table.column_names else [False] * n
        for column in ("harmful_refused", "harmless_not_refusal")
    )


# ---------------------------------------------------------------- contrast pairs


def induce_file(
    questions_file: str | os.PathLike,
    out: str | os.PathLike,
    model: LoadedModel | ModelSpec | str | None = None,
    *,
    column: str | None = None,
    prefill_column: str | None = None,
    refusals: Sequence[str] | None = None,
    limit: int | None = None,
    generation: GenerationConfig = GenerationConfig(),
    harmless: str = "bank",
    seed: int = 0,
) -> dict[str, Any]:
    """Generate contrast pairs for the questions in a file and write them (JSONL/Parquet/...) atomically.

    `harmless` and `seed` as in `legend.induce.induce_pairs` (default: the bundled refusal bank, one
    refusal per question). Every pair is written, with its flags (`harmful_refused`,
    `harmless_not_refusal`) and `harmless_source`.
    """
    if harmless not in HARMLESS_SOURCES:
        raise ValueError(f"unknown harmless source {harmless!r}; choose from {', '.join(HARMLESS_SOURCES)}")
    questions = read_questions(questions_file, column)
    prefills = _read_column(questions_file, prefill_column, len(questions)) if prefill_column else None
    if limit is not None:
        questions = questions[:limit]
        prefills = prefills[:limit] if prefills is not None else None
    lm = as_loaded(model)
    start = time.perf_counter()
    pairs = induce_pairs(
        lm, questions, refusals=refusals, prefills=prefills, config=generation, harmless=harmless, seed=seed
    )
    rows = {
        "question": [p.question for p in pairs],
        "harmful": [p.harmful for p in pairs],
        "harmless": [p.harmless for p in pairs],
        "harmful_refused": [p.harmful_refused for p in pairs],
        "harmless_source": [p.harmless_source for p in pairs],
        "harmless_not_refusal": [p.harmless_not_refusal for p in pairs],
    }
    write_table(datasets.Dataset.from_dict(rows), out)
    return {
        "questions": len(questions),
        "pairs": len(pairs),
        "harmful_refused": sum(bool(p.harmful_refused) for p in pairs),
        "harmless_not_refusal": sum(bool(p.harmless_not_refusal) for p in pairs),
        "harmless": harmless if refusals is None or harmless == "model" else f"{harmless} ({len(refusals)} given)",
        "seconds": round(time.perf_counter() - start, 3),
        "model_id": lm.model_id,
        "out": str(out),
    }


def _read_column(path: str | os.PathLike, column: str, n: int) -> list[str]:
    table = load_table(path)
    if column not in table.column_names:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(table.column_names)})")
    values = table[column]
    for row, value in enumerate(values, start=1):
        if not isinstance(value, str):
            raise DataError(f"{path}: row {row}: field {column!r}: expected a string, got {type(value).__name__}")
    return list(values[:n])


# ---------------------------------------------------------------- the demo


@dataclass(frozen=True)
class DemoSettings:
    """The main job on the bundled samples: two recipes side by side on the same hh-rlhf rows.

    `recipe` is the one whose margins fill `margin_raw`/`margin` of the output ("legend": the
    recommended recipe of legend.selection; "paper": the paper's exact recipe); the other is
    annotated in the same encoding pass (`margin_raw_<name>`) so both are measured on the same rows.
    """

    out_dir: Path = Path("runs/demo")
    model: str = "default"
    dtype: str = "float32"  # bf16 is ~26x slower than fp32 on CPUs without AVX512-BF16 (this project's machines)
    questions: int = 64
    max_new_tokens: int = 48
    pairs: int = 1101  # all bundled pairs: on 200 the CI (±0.07) cannot separate a recipe from its random floor
    batch_size: int = 16
    progress: bool = True
    recipe: str = DEFAULT_RECIPE
    random_directions: int = DEFAULT_RANDOM_DIRECTIONS
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe: expected one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.questions < 2 or self.pairs < 2:
            raise ValueError("the demo needs at least 2 questions and 2 pairs")


# What each recipe is, in one line (printed by the demo).
RECIPE_LINES = {
    DEFAULT_RECIPE: "legend: bundled XSTest contrast pairs (human-labelled answers), mean over the answer tokens, "
    "mean difference, layer by the band rule (docs/selection.md)",
    PAPER_RECIPE: 'paper: induced AdvBench answers vs the one refusal "I can\'t answer that.", last layer, last token',
}


def run_demo(settings: DemoSettings = DemoSettings()) -> dict[str, Any]:
    """Build the legend and the paper recipe's directions, annotate the bundled hh-rlhf sample with both.

    1. induce: `settings.questions` AdvBench questions answered by the model with AdvBench's `target`
       as a prefill, each paired with the paper's single refusal (the paper's contrast pairs);
    2. directions: the paper's (those pairs, last layer, last token) and legend's (`recipe_direction`);
    3. annotate the first `settings.pairs` hh-rlhf pairs with both in ONE encoding pass, keeping the
       pairs' embedding differences;
    4. evaluate both on the hh labels (95% bootstrap CIs) against the random-direction floor, and
       write the HTML report of the `settings.recipe` one.
    Returns a summary with both evaluations, the paths written and the timings.
    """
    start = time.perf_counter()
    out = Path(settings.out_dir)
    table = load_table(sample_path(HH_RLHF_SAMPLE))
    table = table.select(range(min(settings.pairs, len(table))))
    views = pair_views(table, detect_layout(table, source="hh"), source="hh")
    lm = load_model(settings.model, dtype=settings.dtype)
    loaded = time.perf_counter()
    paths = {
        "pairs": out / "pairs.jsonl",
        "direction": out / "direction",
        "paper_direction": out / "direction_paper",
        "legend_direction": out / "direction_legend",
        "annotated": out / "hh_rlhf_annotated.jsonl",
        "report": out / "report.html",
    }
    induced = induce_file(
        sample_path(ADVBENCH),
        paths["pairs"],
        lm,
        prefill_column="target",
        limit=settings.questions,
        harmless="paper",
        generation=GenerationConfig(
            max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, progress=settings.progress
        ),
    )
    encoding = EncodeConfig(batch_size=settings.batch_size, progress=settings.progress)
    paper, paper_report = build_direction_from_file(
        paths["pairs"], lm, recipe_settings(PAPER_RECIPE, encoding=encoding, name="paper")
    )
    legend_start = time.perf_counter()
    legend = recipe_direction(lm, DEFAULT_RECIPE, encoding=encoding, name="legend")
    legend_seconds = time.perf_counter() - legend_start
    paper.save(paths["paper_direction"])
    legend.save(paths["legend_direction"])
    primary, other = (legend, paper) if settings.recipe == DEFAULT_RECIPE else (paper, legend)
    primary.save(paths["direction"])

    annotate_start = time.perf_counter()
    margins = compute_margins_multi(lm, views, [primary, other], encoding, keep_differences=True)
    annotate_seconds = time.perf_counter() - annotate_start
    chosen, rejected = [v.chosen for v in views], [v.rejected for v in views]
    evaluations = {}
    for direction, result in zip((primary, other), margins):
        assert result.differences is not None
        evaluation = evaluate_margins(result.raw, chosen, rejected, n_bootstrap=settings.bootstrap, seed=settings.seed)
        evaluation["random_floor"] = random_floor(
            result.differences,
            result.raw,
            chosen,
            rejected,
            n_directions=settings.random_directions,
            seed=settings.seed,
        )
        evaluation["direction"] = {
            "layer": direction.layer,
            "pooling": direction.pooling,
            "estimator": direction.estimator,
            "heldout": direction.heldout,
            "warnings": [w for w in [saturation_warning(direction.heldout)] if w],
        }
        evaluations[direction.name] = evaluation

    annotate_settings = AnnotateSettings(encoding=encoding)
    raws = [m.raw for m in margins]
    binnings = fit_binnings(raws, annotate_settings)
    summary = annotation_summary(
        str(sample_path(HH_RLHF_SAMPLE)),
        "hh",
        margins[0],
        binnings[0],
        primary,
        (lm.model_id, lm.dtype_name),
        annotate_seconds,
    )
    summary["other_directions"] = other_directions_summary([primary, other], raws, binnings)
    write_table(with_margins(table, raws, binnings, [primary, other]), paths["annotated"])
    write_json(
        sidecar_document(
            sample_path(HH_RLHF_SAMPLE),
            paths["annotated"],
            str(paths["direction"]),
            binnings[0],
            annotate_settings,
            summary,
            {other.name: binnings[1]},
        ),
        sidecar_path(paths["annotated"]),
    )
    assert margins[0].differences is not None
    write_differences(differences_path(paths["annotated"]), margins[0].differences)
    report = build_report(
        paths["annotated"],
        paths["report"],
        direction=paths["direction"],
        metrics=evaluations[primary.name],
        n_bootstrap=settings.bootstrap,
        seed=settings.seed,
    )
    return {
        "model_load_seconds": round(loaded - start, 3),
        "recipe": settings.recipe,
        "recipes": {name: RECIPE_LINES[DEFAULT_RECIPE if name == "legend" else PAPER_RECIPE] for name in evaluations},
        "induce": induced,
        "direction": paper_report if settings.recipe == PAPER_RECIPE else {"heldout": legend.heldout},
        "legend_direction_seconds": round(legend_seconds, 3),
        "annotate": summary,
        "evaluations": evaluations,
        "outputs": {**{k: str(v) for k, v in paths.items()}, "sidecar": str(sidecar_path(paths["annotated"]))},
        "report_notes": report.notes,
        "total_seconds": round(time.perf_counter() - start, 3),
    }
