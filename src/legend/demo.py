"""The main job on the bundled samples (`legend demo`): two recipes side by side on the same hh-rlhf rows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .annotation import (
    AnnotateSettings,
    finish_annotation,
    margin_columns,
    metadata_paths,
    sidecar_path,
    write_metadata,
)
from .annotation.differences import differences_path, write_differences
from .data import detect_layout, load_table, pair_views
from .encoding import EncodeConfig
from .induce import GenerationConfig, induce_file
from .io import write_table
from .margins import compute_margins_multi
from .models import ModelSpec, as_loaded
from .quality import DEFAULT_RANDOM_DIRECTIONS, evaluate_margins, random_floor
from .report import build_report
from .resources import ADVBENCH, HH_RLHF_SAMPLE, sample_path
from .selection import (
    DEFAULT_RECIPE,
    PAPER_RECIPE,
    RECIPES,
    build_direction,
    build_direction_from_file,
    recipe_settings,
    saturation_warning,
)


@dataclass(frozen=True)
class DemoSettings:
    """The main job on the bundled samples: two recipes side by side on the same hh-rlhf rows.

    `recipe` is the one whose margins fill `margin_raw`/`margin` of the output ("legend": the
    recommended recipe of legend.selection; "paper": the paper's exact recipe); the other is
    annotated in the same encoding pass (`margin_raw_<name>`) so both are measured on the same rows.
    """

    out_dir: Path = Path("runs/demo")
    model: ModelSpec | str = "default"  # a name is loaded with `dtype`; a ModelSpec as it says
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
    "mean difference, layer by the stable band rule (docs/selection.md)",
    PAPER_RECIPE: 'paper: induced AdvBench answers vs the one refusal "I can\'t answer that.", last layer, last token',
}


def demo_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where the demo writes: the dataset folder (the annotated rows, their card and `.legend/` metadata, which
    `datasets.load_dataset(out_dir)` loads as the rows and nothing else) and a sibling `<out_dir>-artifacts/`
    folder for everything else (contrast pairs, directions, the report and its figures).

    >>> {k: str(v) for k, v in demo_paths("runs/demo").items() if k in ("annotated", "report")}
    {'annotated': 'runs/demo/hh_rlhf_annotated.jsonl', 'report': 'runs/demo-artifacts/report.html'}
    """
    out = Path(out_dir)
    artifacts = out.with_name(out.name + "-artifacts")
    return {
        "annotated": out / "hh_rlhf_annotated.jsonl",
        "artifacts": artifacts,
        "pairs": artifacts / "pairs.jsonl",
        "paper_direction": artifacts / "direction_paper",
        "legend_direction": artifacts / "direction_legend",
        "report": artifacts / "report.html",
    }


def run_demo(settings: DemoSettings = DemoSettings()) -> dict[str, Any]:
    """Build the legend and the paper recipe's directions, annotate the bundled hh-rlhf sample with both.

    1. induce: `settings.questions` AdvBench questions answered by the model with AdvBench's `target`
       as a prefill, each paired with the paper's single refusal (the paper's contrast pairs);
    2. directions: the paper's (those pairs, last layer, last token) and legend's (`build_direction`);
    3. annotate the first `settings.pairs` hh-rlhf pairs with both in ONE encoding pass, keeping the
       pairs' embedding differences;
    4. evaluate both on the hh labels (95% bootstrap CIs) against the random-direction floor, and
       write the annotated rows with their dataset card, metadata and differences, and the HTML report
       of the `settings.recipe` one (`demo_paths` says where).
    Returns a summary with both evaluations, the paths written and the time of each phase.
    """
    phases: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - clock[0], 3)
        clock[0] = now

    start = clock[0]
    paths = demo_paths(settings.out_dir)
    table = load_table(sample_path(HH_RLHF_SAMPLE))
    table = table.select(range(min(settings.pairs, len(table))))
    views = pair_views(table, detect_layout(table, source="hh"), source="hh")
    spec = settings.model if isinstance(settings.model, ModelSpec) else ModelSpec(settings.model, dtype=settings.dtype)
    lm = as_loaded(spec)
    lap("model_load")
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
    lap("induce")
    encoding = EncodeConfig(batch_size=settings.batch_size, progress=settings.progress)
    paper, paper_report = build_direction_from_file(
        paths["pairs"], lm, recipe_settings(PAPER_RECIPE, encoding=encoding, name="paper"), recipe=PAPER_RECIPE
    )
    lap("paper_direction")
    legend = build_direction(lm, recipe=DEFAULT_RECIPE, encoding=encoding, name="legend")
    lap("legend_direction")
    paper.save(paths["paper_direction"])
    legend.save(paths["legend_direction"])
    primary, other = (legend, paper) if settings.recipe == DEFAULT_RECIPE else (paper, legend)
    primary_path = paths["legend_direction"] if primary is legend else paths["paper_direction"]

    margins = compute_margins_multi(lm, views, [primary, other], encoding, keep_differences=True)
    annotate_seconds = time.perf_counter() - clock[0]
    lap("annotate")
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
    lap("evaluate")

    finished = finish_annotation(
        source=str(sample_path(HH_RLHF_SAMPLE)),
        out=paths["annotated"],
        layout="hh",
        margins=margins,
        directions=[primary, other],
        direction_path=str(primary_path),
        settings=AnnotateSettings(encoding=encoding, keep_differences=True),
        model=(lm.model_id, lm.dtype_name),
        seconds=annotate_seconds,
    )
    summary = finished.summary
    summary["differences"] = str(differences_path(paths["annotated"]))
    write_table(finished.columns(table), paths["annotated"])
    columns = [raw for raw, _ in margin_columns([primary, other])]
    write_differences(
        differences_path(paths["annotated"]),
        {column: m.differences for column, m in zip(columns, margins) if m.differences is not None},
        {"model_fingerprint": lm.fingerprint, "output": paths["annotated"].name},
    )
    write_metadata(paths["annotated"], finished.document)  # the JSON in .legend/ and the dataset card README.md
    lap("write")
    report = build_report(
        paths["annotated"],
        paths["report"],
        direction=primary_path,
        metrics=evaluations[primary.name],
        n_bootstrap=settings.bootstrap,
        seed=settings.seed,
    )
    lap("report")
    return {
        "model_load_seconds": phases["model_load"],
        "phases": phases,
        "recipe": settings.recipe,
        "recipes": {name: RECIPE_LINES[DEFAULT_RECIPE if name == "legend" else PAPER_RECIPE] for name in evaluations},
        "induce": induced,
        "direction": paper_report if settings.recipe == PAPER_RECIPE else {"heldout": legend.heldout},
        "legend_direction_seconds": phases["legend_direction"],
        "annotate": summary,
        "evaluations": evaluations,
        "outputs": {
            **{k: str(v) for k, v in paths.items()},
            "dataset": str(settings.out_dir),
            "card": str(metadata_paths(paths["annotated"]).card),
            "sidecar": str(sidecar_path(paths["annotated"])),
            "differences": str(differences_path(paths["annotated"])),
        },
        "report_notes": report.notes,
        "total_seconds": round(time.perf_counter() - start, 3),
    }
