"""The main job on the bundled samples (`legend demo`): two recipes side by side on the same hh-rlhf rows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .annotation import AnnotateSettings, finish_annotation, sidecar_path
from .data import detect_layout, load_table, pair_views
from .encoding import EncodeConfig
from .induce import GenerationConfig, induce_file
from .io import write_json, write_table
from .margins import compute_margins_multi
from .models import ModelSpec, as_loaded
from .quality import DEFAULT_RANDOM_DIRECTIONS, differences_path, evaluate_margins, random_floor, write_differences
from .report import build_report
from .resources import ADVBENCH, HH_RLHF_SAMPLE, sample_path
from .selection import (
    DEFAULT_RECIPE,
    PAPER_RECIPE,
    RECIPES,
    build_direction_from_file,
    recipe_direction,
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
    spec = settings.model if isinstance(settings.model, ModelSpec) else ModelSpec(settings.model, dtype=settings.dtype)
    lm = as_loaded(spec)
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

    finished = finish_annotation(
        source=str(sample_path(HH_RLHF_SAMPLE)),
        out=paths["annotated"],
        layout="hh",
        margins=margins,
        directions=[primary, other],
        direction_path=str(paths["direction"]),
        settings=AnnotateSettings(encoding=encoding),
        model=(lm.model_id, lm.dtype_name),
        seconds=annotate_seconds,
    )
    summary = finished.summary
    write_table(finished.columns(table), paths["annotated"])
    write_json(finished.document, sidecar_path(paths["annotated"]))
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
