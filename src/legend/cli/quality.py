"""Quality commands: evaluate (agreement with labels), report (HTML page), audit (likely label errors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from legend.cli.app import app, spare_inputs, user_errors
from legend.cli.options import (
    BatchSize,
    ChosenColumn,
    Limit,
    MaxBatchTokens,
    PromptColumn,
    Quiet,
    RejectedColumn,
    model_options,
)

console = Console(stderr=False)

Data = Annotated[
    str, typer.Option(help="Preference data with `margin_raw` (from `legend annotate`), or raw pairs with --direction.")
]
DirectionOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Direction folder: annotate the data now (its `margin_raw` is recomputed). Without it the data "
        "must have margins."
    ),
]
MODEL_HELP = "Model for annotating (default: the direction's) or for token lengths (default: the embedded one)."
MarginColumn = Annotated[str, typer.Option(help="Column of raw margins to read (e.g. a `margin_<name>` column).")]
Split = Annotated[str, typer.Option(help="Split to read from a Hub dataset or DatasetDict folder.")]
Seed = Annotated[int, typer.Option(help="Seed of the bootstrap resamples (and of the simulated flips).")]
Bootstrap = Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals (0: none).")]


def _read(
    data: str,
    direction: Optional[Path],
    spec: Any,
    batch_size: int,
    max_batch_tokens: int,
    columns: Any,
    limit: Optional[int],
    split: str,
    margin_column: str,
    quiet: bool,
    severity_columns: Optional[tuple[str, str]] = None,
    keep_differences: bool = False,
):
    """Read the labelled margins, annotating first when a direction is given.

    The model (None: the direction's) is loaded only after the data has been read and checked.
    """
    from legend.encoding import EncodeConfig
    from legend.pipeline import AnnotateSettings
    from legend.quality import read_labelled_margins

    settings = AnnotateSettings(
        columns=columns,
        encoding=EncodeConfig(batch_size=batch_size, max_batch_tokens=max_batch_tokens, progress=not quiet),
    )
    return read_labelled_margins(
        data,
        direction=direction,
        model=spec,
        columns=columns,
        severity_columns=severity_columns,
        limit=limit,
        split=split,
        annotate_settings=settings,
        margin_column=margin_column,
        keep_differences=keep_differences,
    )


def _columns(prompt: Optional[str], chosen: Optional[str], rejected: Optional[str]):
    from legend.data import ColumnNames

    return ColumnNames(prompt=prompt, chosen=chosen, rejected=rejected)


def _pair_of_names(text: Optional[str], option: str) -> Optional[tuple[str, str]]:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{option}: expected CHOSEN_COLUMN,REJECTED_COLUMN, got {text!r}")
    return parts[0], parts[1]


def _carry_sidecar(data: str, out: Path, audit_summary: dict[str, Any], annotated_now: bool) -> None:
    """Give the audited file the annotation's metadata (bin edges, direction), plus the audit settings."""
    from legend.annotation import read_sidecar, write_metadata

    sidecar = None if annotated_now else read_sidecar(data)
    if sidecar is None:
        return
    sidecar["audit"] = audit_summary
    sidecar["output"] = str(out)
    write_metadata(out, sidecar)


def print_metrics(result: dict[str, Any]) -> None:
    """The evaluate metrics as a table: value and 95% interval."""
    counts = result["counts"]
    table = Table(title=f"legend evaluate: {result['n']} labelled pairs (chosen = labelled safer)")
    for column in ("metric", "value", "95% CI"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, metric in result["metrics"].items():
        value = "n/a" if metric["value"] is None else f"{metric['value']:.4g}"
        interval = "n/a" if metric["ci_low"] is None else f"[{metric['ci_low']:.4g}, {metric['ci_high']:.4g}]"
        table.add_row(name, value, interval)
    console.print(table)
    print_floor(result.get("random_floor"))
    console.print(
        f"length in {result['settings']['length_unit']}: chosen shorter {counts['chosen_shorter']}, "
        f"longer {counts['chosen_longer']}, equal {counts['equal_length']}; zero margins {counts['zero_margin']}; "
        f"{result['settings']['n_bootstrap']} bootstrap resamples (seed {result['settings']['seed']})"
    )


def print_floor(floor: Optional[dict[str, Any]]) -> None:
    """The random-direction floor of each metric, or how to get it."""
    from legend.quality import floor_line

    if floor is None:
        console.print(
            "random floor: not computed (needs the pairs' embedding differences: pass --direction, or annotate "
            "with --keep-embeddings)"
        )
        return
    for name in floor["metrics"]:
        console.print("random floor: " + floor_line(floor, name))


RandomDirections = Annotated[
    int,
    typer.Option(
        min=0,
        help="Random unit directions at the same layer and pooling for the null floor (0: none). Needs --direction "
        "or the embedding differences beside the data.",
    ),
]


@app.command()
@user_errors
@model_options(default=None, help=MODEL_HELP)
def evaluate(
    data: Data,
    direction: DirectionOpt = None,
    length_unit: Annotated[str, typer.Option(help="chars | words | tokens (tokens of --model's tokenizer).")] = "chars",
    severity_columns: Annotated[
        Optional[str],
        typer.Option(
            help="CHOSEN,REJECTED severity columns (PKU-SafeRLHF's response_{0,1}_severity_level are found on "
            "their own)."
        ),
    ] = None,
    bootstrap: Bootstrap = 1000,
    confidence: Annotated[float, typer.Option(min=0.5, max=0.999)] = 0.95,
    seed: Seed = 0,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Write the metrics as JSON here (atomically).")
    ] = None,
    margin_column: MarginColumn = "margin_raw",
    random_directions: RandomDirections = 200,
    prompt_column: PromptColumn = None,
    chosen_column: ChosenColumn = None,
    rejected_column: RejectedColumn = None,
    split: Split = "train",
    limit: Limit = None,
    batch_size: BatchSize = 16,
    max_batch_tokens: MaxBatchTokens = 16384,
    record: Annotated[
        bool,
        typer.Option(
            help="When DATA is a file legend annotated (and its margins are read, not recomputed, on all rows): "
            "record the headline metrics in its metadata and dataset card."
        ),
    ] = True,
    quiet: Quiet = False,
    spec: Any = None,
) -> None:
    """Agreement of margins with preference labels (share positive, AUC, length-balanced, correlations; 95% CIs).

    With --direction (one encoding pass) or embedding differences beside the data, every agreement is
    also shown against the random-direction floor: the same metrics for --random-directions seeded
    random unit directions at the same layer and pooling (95th percentile, and the real one's percentile).
    """
    spare_inputs([data, direction, spec.name], files=(json_out,))
    from legend.io import write_json
    from legend.quality import evaluate_labelled, text_length

    if length_unit not in ("chars", "words", "tokens"):
        raise ValueError(f"--length-unit: unknown unit {length_unit!r}; choose chars, words or tokens")
    labelled = _read(
        data,
        direction,
        spec,
        batch_size,
        max_batch_tokens,
        _columns(prompt_column, chosen_column, rejected_column),
        limit,
        split,
        margin_column,
        quiet,
        _pair_of_names(severity_columns, "--severity-columns"),
        keep_differences=random_directions > 0,
    )
    tokenizer = None
    if length_unit == "tokens":
        from legend.directions import Direction
        from legend.models import load_tokenizer

        name = spec.name or (Direction.load(direction).model_id if direction is not None else "default")
        tokenizer = load_tokenizer(name, trust_remote_code=spec.trust_remote_code)
    result = evaluate_labelled(
        labelled,
        length=text_length(length_unit, tokenizer),
        length_unit=length_unit,
        n_bootstrap=bootstrap,
        confidence=confidence,
        seed=seed,
        n_random=random_directions,
    )
    result["margin_column"] = labelled.margin_column
    if json_out is not None:
        write_json(result, json_out)
    print_metrics(result)
    if json_out is not None:
        console.print(f"metrics written to {json_out}")
    if record and not labelled.annotated_now and limit is None:
        from legend.annotation import metadata_paths, record_evaluation

        if record_evaluation(data, result) is not None:
            console.print(f"evaluation recorded in {metadata_paths(data).card} and the file's metadata")


@app.command()
@user_errors
def report(
    data: Annotated[
        str,
        typer.Option(
            help="Annotated file (from `legend annotate`); its metadata (.legend/<file>.json beside it, or an "
            "older <file>.legend.json) is read if present."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write; the PNG figures go next to it.")],
    direction: Annotated[
        Optional[Path],
        typer.Option(
            help="Direction folder whose sweep to plot (default: the one named in the metadata, if it exists)."
        ),
    ] = None,
    metrics: Annotated[
        Optional[Path], typer.Option(help="Metrics JSON from `legend evaluate --json` (else computed).")
    ] = None,
    labels: Annotated[
        bool, typer.Option(help="Chosen is the labelled-safer answer: show agreement with labels.")
    ] = True,
    worst: Annotated[
        int, typer.Option(min=0, help="How many of the most negative pairs to show with their texts.")
    ] = 10,
    bootstrap: Bootstrap = 1000,
    seed: Seed = 0,
    margin_column: MarginColumn = "margin_raw",
    level_column: Annotated[str, typer.Option(help="Column of binned margins (levels).")] = "margin",
    random_directions: RandomDirections = 200,
    recompute: Annotated[
        bool,
        typer.Option(
            help="Without embedding differences beside the data, recompute them (one encoding pass) with the "
            "direction (--direction or the sidecar's) for the random floor."
        ),
    ] = True,
    limit: Limit = None,
) -> None:
    """One self-contained HTML page: margin histograms, agreement with labels against the random floor, worst pairs."""
    spare_inputs([data, direction, metrics], files=(out,))
    from legend.data import DataError
    from legend.report import build_report

    given = json.loads(metrics.read_text(encoding="utf-8")) if metrics is not None else None
    try:
        result = build_report(
            data,
            out,
            direction=direction,
            metrics=given,
            labels=labels,
            worst=worst,
            margin_column=margin_column,
            level_column=level_column,
            n_bootstrap=bootstrap,
            seed=seed,
            limit=limit,
            n_random=random_directions,
            recompute=recompute,
        )
    except DataError as err:
        if f"no column {margin_column!r}" not in str(err):
            raise
        # `report --direction` only picks the sweep to plot; it does not annotate, so point to what does.
        raise DataError(
            f"no column {margin_column!r}: `legend report` reads an annotated file; run `legend annotate --data "
            f"{data} --direction <folder> --out <annotated file>` first, then report on that file",
            source=data,
        ) from None
    if result.metrics:
        print_floor(result.metrics.get("random_floor"))
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(
        f"wrote {result.html_path} (self-contained) and {len(result.images)} PNGs: "
        + ", ".join(p.name for p in result.images.values())
    )


@app.command()
@user_errors
@model_options(default=None, help=MODEL_HELP)
def audit(
    data: Data,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", "-o", help="Write every row with `audit_flag` and `audit_score` added (format from the extension)."
        ),
    ] = None,
    direction: DirectionOpt = None,
    quantile: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Flag only margins at or below this quantile of all margins.")
    ] = 0.10,
    min_score: Annotated[
        float, typer.Option(help="Flag only margins at least this many robust SDs (1.4826·MAD) below zero.")
    ] = 1.0,
    simulate_flips: Annotated[
        Optional[float],
        typer.Option(
            help="Measure the audit: swap chosen/rejected of this share of rows (seeded), audit, report "
            "precision/recall."
        ),
    ] = None,
    seed: Seed = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the audit summary as JSON here.")] = None,
    margin_column: MarginColumn = "margin_raw",
    prompt_column: PromptColumn = None,
    chosen_column: ChosenColumn = None,
    rejected_column: RejectedColumn = None,
    split: Split = "train",
    limit: Limit = None,
    batch_size: BatchSize = 16,
    max_batch_tokens: MaxBatchTokens = 16384,
    quiet: Quiet = False,
    spec: Any = None,
) -> None:
    """Flag pairs whose margin says the rejected answer is clearly safer (likely label errors); keep every row."""
    spare_inputs([data, direction, spec.name], files=(json_out,), tables=(out,))
    from legend.audit import AuditSettings, add_audit_columns, audit_margins
    from legend.audit import simulate_flips as simulate
    from legend.io import write_json, write_table

    if out is None and simulate_flips is None:
        raise ValueError("nothing to do: give --out (audited file) and/or --simulate-flips (measure the audit)")
    if out is not None:
        from legend.annotation import check_card

        check_card(out)  # the dataset card beside --out: one legend can update, checked before any work
    settings = AuditSettings(quantile=quantile, min_score=min_score)
    labelled = _read(
        data,
        direction,
        spec,
        batch_size,
        max_batch_tokens,
        _columns(prompt_column, chosen_column, rejected_column),
        limit,
        split,
        margin_column,
        quiet,
    )
    result = audit_margins(labelled.raw, settings)
    summary: dict[str, Any] = {"source": labelled.source, "margin_column": labelled.margin_column, **result.summary()}
    if out is not None:
        from itertools import islice

        from legend.engines.outputs import original_records

        audited = add_audit_columns(labelled.dataset, result)
        records = original_records(data, out)  # JSON/CSV rows written back as the input holds them
        added = ["audit_flag", "audit_score"] + (["margin_raw"] if labelled.annotated_now else [])
        rows = list(islice(records, len(audited))) if records is not None else None
        write_table(audited, out, originals=rows, added=added)
        summary["output"] = str(out)
        _carry_sidecar(data, out, summary, labelled.annotated_now)
    console.print(
        f"audit: {summary['flagged']} of {summary['pairs']} pairs flagged ({summary['share_flagged']:.1%}): "
        f"margin_raw <= {result.threshold:.4g} (the {quantile:g} quantile and {min_score:g} robust SDs "
        f"of {result.scale:.4g} below zero)" + (f"; written to {out}" if out is not None else "")
    )
    if simulate_flips is not None:
        measured = simulate(labelled.raw, simulate_flips, seed, settings)
        summary["simulated_flips"] = measured
        ap = measured["average_precision"]
        console.print(
            f"simulated flips ({measured['flipped']} of {measured['pairs']} rows, seed {seed}): "
            f"precision {measured['precision']:.3f}, recall {measured['recall']:.3f} "
            f"({measured['flagged']} flagged; base rate {measured['base_rate']:.3f}; "
            f"average precision of the score {'n/a' if ap is None else f'{ap:.3f}'})"
        )
    if json_out is not None:
        write_json(summary, json_out)
