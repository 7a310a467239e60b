"""The `demo` command: both recipes' directions, the bundled hh-rlhf sample annotated with both, and their agreement
side by side against the random floor (`print_side_by_side`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from legend.cli.annotate import print_margin_summary
from legend.cli.app import app, user_errors
from legend.cli.options import (
    BatchSize,
    Quiet,
    model_options,
)

console = Console(stderr=False)


@app.command()
@user_errors
@model_options()
def demo(
    out_dir: Annotated[Path, typer.Option(help="Folder for the pairs, the direction and the annotated file.")] = Path(
        "runs/demo"
    ),
    recipe: Annotated[
        str,
        typer.Option(
            help="Whose margins fill margin_raw/margin: legend (the recommended recipe, docs/selection.md) | paper "
            "(the paper's exact recipe: induced AdvBench answers vs one refusal, last layer, last token). Both are "
            "measured side by side either way."
        ),
    ] = "legend",
    questions: Annotated[int, typer.Option(min=2, help="AdvBench questions to induce pairs from.")] = 64,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
    pairs: Annotated[
        int, typer.Option(min=2, help="hh-rlhf harmless pairs to annotate (bundled sample, 1,101 rows).")
    ] = 1101,
    random_directions: Annotated[int, typer.Option(min=1, help="Random directions of the null floor.")] = 200,
    batch_size: BatchSize = 16,
    quiet: Quiet = False,
    spec: Any = None,
) -> None:
    """The main job: two recipes' directions, the hh-rlhf sample annotated with both, agreement vs the random floor."""
    from legend.pipeline import DemoSettings, run_demo

    report = run_demo(
        DemoSettings(
            out_dir=out_dir,
            model=spec,
            recipe=recipe,
            questions=questions,
            max_new_tokens=max_new_tokens,
            pairs=pairs,
            random_directions=random_directions,
            batch_size=batch_size,
            progress=not quiet,
        )
    )
    console.print(
        f"induced {report['induce']['pairs']} AdvBench pairs for the paper recipe "
        f"({report['induce']['harmful_refused']} refusals flagged) in {report['induce']['seconds']:.1f} s"
    )
    print_margin_summary(report["annotate"], Path(report["outputs"]["annotated"]))
    print_side_by_side(report)
    console.print(
        f"total {report['total_seconds']:.1f} s ("
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in report["phases"].items())
        + f"); the annotated dataset (loads with datasets.load_dataset) in {out_dir}, its card "
        f"{report['outputs']['card']}; pairs, directions and the report ({report['outputs']['report']}) in "
        f"{report['outputs']['artifacts']}"
    )


def print_side_by_side(report: dict[str, Any]) -> None:
    """Both recipes on the same hh rows: agreement with 95% CIs, and the random-direction floor."""
    evaluations = report["evaluations"]
    n = next(iter(evaluations.values()))["n"]
    table = Table(title=f"Do the margins mean anything? {n} hh-rlhf harmless pairs (chosen = labelled safer)")
    table.add_column("", justify="left")
    for name in evaluations:
        table.add_column(f"{name} recipe" + (" (in margin)" if name == report["recipe"] else ""), justify="right")

    def metric(name: str, key: str) -> list[str]:
        cells = []
        for evaluation in evaluations.values():
            m = evaluation["metrics"][key]
            floor = evaluation["random_floor"]["metrics"].get(key)
            text = "n/a" if m["value"] is None else f"{m['value']:.3f}"
            if m["ci_low"] is not None:
                text += f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
            if floor and floor["floor"] is not None:
                above = m["value"] is not None and m["value"] > floor["floor"]
                text += (
                    f"\nfloor {floor['floor']:.3f}: {'ABOVE' if above else 'not above'} (pct {floor['percentile']:.0f})"
                )
            cells.append(text)
        return [name] + cells

    table.add_row(*metric("agreement (share margin > 0)", "share_positive"))
    table.add_row(*metric("length-balanced agreement", "agreement_length_balanced"))
    table.add_row(*metric("AUC of the margins", "auc"))
    rows = []
    for evaluation in evaluations.values():
        d = evaluation["direction"]
        held = d["heldout"]
        rows.append(
            f"layer {d['layer']}, {d['pooling']}, {d['estimator']}\nheld-out separation "
            f"{held.get('accuracy', float('nan')):.3f}" + (" (SATURATED)" if d["warnings"] else "")
        )
    table.add_row("direction", *rows)
    console.print(table)
    floor = next(iter(evaluations.values()))["random_floor"]
    console.print(
        f"floor = 95th percentile of {floor['n_directions']} random unit directions at the same layer and pooling "
        "over the same pairs; an agreement not above it is what any direction gives."
    )
    for line in report["recipes"].values():
        console.print(f"  {line}")
    for name, evaluation in evaluations.items():
        for warning in evaluation["direction"]["warnings"]:
            console.print(f"warning ({name} recipe): {warning}")
