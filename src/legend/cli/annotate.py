"""The `annotate` command: margins for every row of a preference file, the summary table and the label evidence it
prints (`print_margin_summary`, also printed by `demo`, and `print_evidence`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from legend.cli.app import app, user_errors
from legend.cli.options import (
    BatchSize,
    ChosenColumn,
    Limit,
    MaxBatchTokens,
    OutFile,
    PromptColumn,
    Quiet,
    RejectedColumn,
    model_options,
)
from legend.registries import ENCODERS, ENGINES

console = Console(stderr=False)


def _parse_floats(text: Optional[str]) -> Optional[tuple[float, ...]]:
    """--level-values: comma-separated finite numbers that never decrease (`check_level_values`)."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--level-values: expected comma-separated numbers, got {text!r}") from None
    from legend.annotation import check_level_values

    check_level_values(values, "--level-values")
    return values


def print_margin_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    """The short table every annotation prints: rows, distribution, share positive, time."""
    raw, binned = summary["margin_raw"], summary["margin"]
    table = Table(title=f"legend annotate: {summary['rows']} rows ({summary['layout']} layout)", show_header=False)
    table.add_row("rows written", str(summary["rows"]))
    table.add_row("identical chosen/rejected (margin 0)", str(summary["identical_pairs"]))
    table.add_row("texts truncated from the left", str(summary["truncated_texts"]))
    if summary.get("answer_truncated_pairs"):
        table.add_row("pairs whose answer truncation cut by more than half", str(summary["answer_truncated_pairs"]))
    if raw.get("n"):
        table.add_row("share of positive margins", f"{raw['share_positive']:.3f}")
        table.add_row("margin_raw mean ± std", f"{raw['mean']:.4g} ± {raw['std']:.4g}")
        table.add_row("margin_raw p10 / median / p90", f"{raw['p10']:.4g} / {raw['median']:.4g} / {raw['p90']:.4g}")
    table.add_row(
        "margin levels (value: count)", ", ".join(f"{k}: {v}" for k, v in binned.get("level_counts", {}).items())
    )
    if summary.get("bins"):
        table.add_row("bin edges", str(summary["bins"]))
    table.add_row("time", f"{summary['seconds']:.1f} s ({summary['pairs_per_second'] or 0:.2f} pairs/s)")
    if out is not None:
        table.add_row("output", str(out))
    console.print(table)


@app.command()
@user_errors
@model_options(default=None)
def annotate(
    data: Annotated[
        str, typer.Option(help="Preference data: .jsonl/.json/.parquet/.csv, a saved `datasets` folder, or a Hub name.")
    ],
    out: OutFile,
    direction: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Direction folder from `legend direction`, or a Hub repo id (user/name; read from the local HF "
            "cache when offline); repeat to apply several in one pass (the first fills margin_raw/margin, the "
            "others margin_raw_<name>/margin_<name>). Default: the model's recommended direction (docs/selection.md), "
            "built once and kept in the legend cache."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to read from a Hub dataset or DatasetDict folder.")] = "train",
    levels: Annotated[
        Optional[int], typer.Option(min=1, help="Number of margin levels (default 4, or --bins-from's).")
    ] = None,
    level_values: Annotated[
        Optional[str], typer.Option(help="Comma-separated value of each level (default 0,1,2,..., or --bins-from's).")
    ] = None,
    bins_from: Annotated[
        Optional[Path],
        typer.Option(
            help="Re-use the bin edges and level values of an earlier run: its annotated file, its folder, or its "
            "metadata (.legend/<file>.json; older <file>.legend.json sidecars work too); --levels/--level-values "
            "may repeat them but not differ."
        ),
    ] = None,
    prompt_column: PromptColumn = None,
    chosen_column: ChosenColumn = None,
    rejected_column: RejectedColumn = None,
    limit: Limit = None,
    max_length: Annotated[Optional[int], typer.Option(min=2, help="Default: the direction's.")] = None,
    batch_size: BatchSize = 16,
    max_batch_tokens: MaxBatchTokens = 16384,
    summary_json: Annotated[bool, typer.Option(help="Print the summary as JSON instead of a table.")] = False,
    prefix_sharing: Annotated[
        bool, typer.Option(help="Run each pair's prompt once for both answers (same margins, less work).")
    ] = True,
    sharing_method: Annotated[
        str,
        typer.Option(
            help="How a prompt is shared: auto | packed (one row, block mask) | cache (prompt keys/values "
            "reused; works with flash attention)."
        ),
    ] = "auto",
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="Rows read, annotated and written at a time (memory stays flat).")
    ] = 4096,
    engine: Annotated[str, typer.Option(help=ENGINES.describe())] = "local",
    encoder: Annotated[
        str, typer.Option(help="How hidden states are computed: " + ENCODERS.describe())
    ] = "transformers",
    num_workers: Annotated[
        int, typer.Option(min=1, help="--engine ray: model actors (one GPU each where the cluster has GPUs).")
    ] = 2,
    resume: Annotated[
        bool,
        typer.Option(
            help="--engine local: keep finished chunks in .<out name>.legend-work/ beside --out and, when a "
            "run with the same input and settings stopped, continue from them."
        ),
    ] = True,
    keep_differences: Annotated[
        bool,
        typer.Option(
            help="Keep each pair's embedding difference (every direction's layer and pooling) from the same pass, in "
            ".legend/<file>.differences.safetensors: `legend evaluate`/`report` then score the random floor without "
            "a model (4 x hidden bytes a pair and direction)."
        ),
    ] = False,
    evidence: Annotated[
        str,
        typer.Option(
            help="auto (where the layout says which answer was preferred: hh-rlhf, PKU-SafeRLHF) | labelled (the "
            "data's chosen is the preferred answer) | off: print agreement with the labels, 95% CIs, against the "
            "random-direction floor, from the same encoding pass."
        ),
    ] = "auto",
    random_directions: Annotated[
        int, typer.Option(min=1, help="Random unit directions of the floor (seeded by --seed).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the floor's random directions and the bootstrap intervals.")] = 0,
    overwrite_margins: Annotated[
        bool,
        typer.Option(
            help="An input column named like one legend writes (margin_raw, margin, margin_raw_<name>, ...) is an "
            "error; with this its values are replaced where the column stands (the column order is kept)."
        ),
    ] = False,
    quiet: Quiet = False,
    spec: Any = None,
) -> None:
    """Add `margin_raw` (projection) and `margin` (binned, what TRL reads) to every row, with their metadata.

    Beside --out: README.md (a dataset card; an existing card is updated, only legend's section for this file)
    and .legend/<file>.json (bin edges, summary, settings), both ignored by `datasets.load_dataset(folder)`.
    """
    from legend.annotation import load_binning
    from legend.data import ColumnNames
    from legend.encoding import EncodeConfig
    from legend.pipeline import AnnotateSettings, annotate_file

    # No --model: the model each direction records (read once, by the engine, with the direction).
    lm = spec
    encoding = EncodeConfig(
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        max_length=max_length,
        progress=not quiet,
        prefix_sharing=prefix_sharing,
        sharing_method=sharing_method,
    )
    values = _parse_floats(level_values)
    binning = load_binning(bins_from) if bins_from else None
    if binning is not None:  # the settings check this too; here the message names the options
        _check_against_bins(binning, levels, values)
    elif values is not None and levels is not None and len(values) != levels:
        raise ValueError(f"--level-values: {len(values)} values given for --levels {levels}")
    settings = AnnotateSettings(  # unset levels/values resolve there: the bins', else counted, else the default
        levels=levels,
        level_values=values,
        binning=binning,
        columns=ColumnNames(prompt=prompt_column, chosen=chosen_column, rejected=rejected_column),
        chunk_rows=chunk_rows,
        encoding=encoding,
        encoder=encoder,
        keep_differences=keep_differences,
        evidence=evidence,
        random_directions=random_directions,
        seed=seed,
        overwrite_margins=overwrite_margins,
    )
    result = annotate_file(
        data,
        None if not direction else direction if len(direction) > 1 else direction[0],
        out,
        lm,
        settings,
        split=split,
        limit=limit,
        engine=engine,
        num_workers=num_workers,
        resume=resume,
    )
    if summary_json:
        typer.echo(json.dumps(result.summary, indent=2, default=str))
        return
    cache = result.summary.get("direction_cache")
    if cache:
        verb = "built the model's recommended direction and kept it" if cache["built"] else "used the cached direction"
        console.print(f"{verb} in {cache['path']} (docs/selection.md; reused by the next run with this model)")
    print_margin_summary(result.summary, out)
    if result.summary.get("evidence"):
        print_evidence(result.summary["evidence"])


def print_evidence(evidence: dict[str, Any]) -> None:
    """Agreement with the labels with 95% CIs, each against the random-direction floor (one line a metric)."""
    names = {
        "share_positive": "agreement (share margin > 0)",
        "agreement_length_balanced": "length-balanced agreement",
        "auc": "AUC of the margins",
    }
    console.print(
        f"Do the margins agree with {evidence['labels']} labels (chosen = preferred)? {evidence['n']} pairs; "
        f"floor = {evidence['floor_quantile']:.0%} of {evidence['random_directions']} random unit directions at the "
        "same layer and pooling"
    )
    for key, label in names.items():
        m = evidence["metrics"][key]
        if m["value"] is None:
            continue
        ci = "" if m["ci_low"] is None else f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        floor = "" if m["floor"] is None else f"; floor {m['floor']:.3f}: {'ABOVE' if m['above'] else 'not above'}"
        console.print(f"  {label}: {m['value']:.3f}{ci}{floor}")
    if evidence.get("caution"):
        console.print(f"  caution: {evidence['caution']}")


def _check_against_bins(binning: Any, levels: Optional[int], values: Optional[tuple[float, ...]]) -> None:
    """--levels/--level-values given with --bins-from must say what the loaded bins say."""
    if levels is not None and levels != binning.levels:
        raise ValueError(
            f"--levels {levels} conflicts with --bins-from {binning.source} ({binning.levels} levels); drop one of them"
        )
    if values is not None and list(values) != list(binning.values):
        shown = ",".join(f"{v:g}" for v in binning.values)
        raise ValueError(
            f"--level-values {','.join(f'{v:g}' for v in values)} conflicts with --bins-from {binning.source} "
            f"(level values {shown}); drop one of them"
        )
