"""Core commands: induce, direction, annotate, demo."""

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
    MaxLength,
    OutFile,
    PromptColumn,
    Quiet,
    RejectedColumn,
    model_options,
)
from legend.registries import ENCODERS, ENGINES, ESTIMATORS, POOLINGS

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
@model_options()
def induce(
    questions: Annotated[
        Path, typer.Option(help="CSV/JSONL/JSON of harmful questions (AdvBench's `goal` works as is).")
    ],
    out: OutFile,
    column: Annotated[
        Optional[str], typer.Option(help="Question column (auto: question, goal, prompt, instruction, ...).")
    ] = None,
    prefill_column: Annotated[
        Optional[str],
        typer.Option(
            help="Column whose text starts each answer (e.g. AdvBench `target`), so an aligned model "
            "continues instead of refusing."
        ),
    ] = None,
    refusal: Annotated[
        Optional[list[str]],
        typer.Option(help="Harmless answer template; repeat to give several. Default: the bundled refusal bank."),
    ] = None,
    harmless: Annotated[
        Optional[str],
        typer.Option(
            help="bank: one refusal per question from the bank (or --refusal), by a seeded hash | paper: the "
            "paper's single refusal string (or --refusal in turn) | model: the model's own answer under a safety "
            "system prompt (non-refusals flagged `harmless_not_refusal`, left out by `legend direction`). "
            "Default: bank, or paper (in turn) when --refusal is given."
        ),
    ] = None,
    refusal_bank: Annotated[
        Optional[Path], typer.Option(help="A refusal bank file (JSON with `refusals`, or one refusal a line).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the per-question refusal assignment.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    limit: Limit = None,
    batch_size: BatchSize = 16,
    quiet: Quiet = False,
    spec: Any = None,
) -> None:
    """Generate contrast pairs {question, harmful, harmless}: a greedy answer by the model and a harmless one."""
    spare_inputs([questions, spec.name, refusal_bank], tables=(out,))
    from legend.induce import HARMLESS_SOURCES, GenerationConfig, load_refusal_bank
    from legend.pipeline import induce_file

    harmless = harmless or ("paper" if refusal else "bank")
    if harmless not in HARMLESS_SOURCES:
        raise ValueError(f"--harmless: expected one of {', '.join(HARMLESS_SOURCES)}, got {harmless!r}")
    if refusal and refusal_bank is not None:
        raise ValueError("give --refusal or --refusal-bank, not both")
    refusals = tuple(refusal) if refusal else (load_refusal_bank(refusal_bank) if refusal_bank else None)
    report = induce_file(
        questions,
        out,
        spec,
        column=column,
        prefill_column=prefill_column,
        refusals=refusals,
        harmless=harmless,
        seed=seed,
        limit=limit,
        generation=GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=not quiet),
    )
    line = (
        f"wrote {report['pairs']} pairs to {out} in {report['seconds']:.1f} s "
        f"({report['harmful_refused']} generated answers look like refusals: flagged `harmful_refused`"
    )
    if harmless == "model":
        line += f"; {report['harmless_not_refusal']} self-written harmless answers are not refusals: flagged"
    console.print(line + f"); harmless answers: {report['harmless']}")


@app.command()
@user_errors
@model_options()
def direction(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the direction artifact.")],
    recipe: Annotated[
        str,
        typer.Option(
            help="legend (the recommended recipe, docs/selection.md: the bundled XSTest contrast pairs unless --pairs "
            "is given, mean pooling over the answer tokens, mean difference, the layer chosen on the pairs) | paper "
            "(the paper's exact recipe: last layer, last token, mean difference; needs --pairs from `legend induce`). "
            "--layer/--pooling/--estimator/--select override the recipe's choice."
        ),
    ] = "legend",
    pairs: Annotated[
        Optional[list[Path]],
        typer.Option(
            help="Contrast pairs with columns question, harmful, harmless (default: the recipe's own); repeat to mix "
            "sources (each pair's source is recorded, and --select auto validates across them)."
        ),
    ] = None,
    layer: Annotated[
        Optional[int],
        typer.Option(
            help="Hidden-state index: 0 embeddings .. L last (after the final norm); negative counts from the "
            "end. Default: the recipe's (chosen on the pairs for legend, -1 for paper); given, it is fixed."
        ),
    ] = None,
    pooling: Annotated[
        Optional[str],
        typer.Option(help=POOLINGS.describe() + ". Default: the recipe's (legend: mean, paper: last)."),
    ] = None,
    estimator: Annotated[
        Optional[str],
        typer.Option(help=ESTIMATORS.describe() + ". Default: the recipe's (mean_difference)."),
    ] = None,
    select: Annotated[
        Optional[str],
        typer.Option(
            help="none | auto: sweep what is not fixed (layers, and poolings/estimators not given) on the pairs and "
            "choose by the stable band rule (docs/selection.md). Default: the recipe's (legend: auto, paper: none)."
        ),
    ] = None,
    select_on: Annotated[
        Optional[Path],
        typer.Option(
            help="Labelled preference pairs (chosen = safer): choose the configuration whose margins agree "
            "best with them on a dev split, report it on the rest."
        ),
    ] = None,
    layer_stride: Annotated[int, typer.Option(min=1, help="Sweep every k-th layer (always including the last).")] = 1,
    dev_fraction: Annotated[
        float, typer.Option(min=0.05, max=0.95, help="Share of --select-on pairs used to choose; the rest report.")
    ] = 0.5,
    name: Annotated[str, typer.Option(help="Concept name stored in the artifact.")] = "safety",
    template: Annotated[
        str, typer.Option(help="auto (chat template when the tokenizer has one) | chat | plain.")
    ] = "auto",
    question_column: str = "question",
    harmful_column: str = "harmful",
    harmless_column: str = "harmless",
    keep_refused: Annotated[bool, typer.Option(help="Keep pairs flagged harmful_refused by `legend induce`.")] = False,
    test_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of pairs held out to measure separation.")
    ] = 0.2,
    seed: int = 0,
    limit: Limit = None,
    max_length: MaxLength = 2048,
    batch_size: BatchSize = 16,
    push_to_hub: Annotated[
        Optional[str],
        typer.Option(help="Also upload the folder to this Hub model repo (user/name; created if needed)."),
    ] = None,
    quiet: Quiet = False,
    spec: Any = None,
) -> None:
    """Build a safety direction for a model and save it as a folder (the recommended recipe unless told otherwise)."""
    spare_inputs([*(pairs or []), spec.name, select_on], folders=(out,))
    from legend.directions import Direction
    from legend.encoding import EncodeConfig
    from legend.pipeline import build_direction_from_file
    from legend.selection import RECIPES, recipe_settings

    if recipe not in RECIPES:
        raise ValueError(f"--recipe: expected one of {', '.join(RECIPES)}, got {recipe!r}")
    if recipe == "paper" and not pairs:
        raise ValueError("--recipe paper needs --pairs: the paper's contrast pairs are induced (`legend induce`)")
    if push_to_hub:
        Direction.check_push(push_to_hub)  # offline, no token, a bad repo id: now, not after the build
    _check_template_room(spec, template, max_length)
    given = {"layer": layer, "pooling": pooling, "estimator": estimator, "select": select}
    settings = recipe_settings(
        recipe,
        layer_stride=layer_stride,
        dev_fraction=dev_fraction,
        test_fraction=test_fraction,
        seed=seed,
        name=name,
        encoding=EncodeConfig(template=template, max_length=max_length, batch_size=batch_size, progress=not quiet),
        **{key: value for key, value in given.items() if value is not None},
    )
    built, report = build_direction_from_file(
        None if not pairs else pairs if len(pairs) > 1 else pairs[0],
        spec,
        settings,
        recipe=recipe,
        question=question_column,
        harmful=harmful_column,
        harmless=harmless_column,
        drop_refused=not keep_refused,
        limit=limit,
        select_on=select_on,
    )
    built.save(out)
    if "selection" in report:
        _print_selection(report["selection"], report["candidates"])
    heldout = built.heldout
    acc = (
        f"{heldout['accuracy']:.3f} (AUC {heldout['auc']:.3f}, {heldout['n_test']} held-out pairs)"
        if "accuracy" in heldout
        else "n/a"
    )
    console.print(
        f"direction {built.name!r}: layer {built.layer}/{built.num_layers}, pooling {built.pooling}, "
        f"{built.estimator}, {report['pairs_used']} pairs ({report['left_out_refused']} refused left out); "
        f"held-out separation accuracy {acc}; saved to {out}"
    )
    if len(report["sources"]) > 1:
        console.print("sources: " + "; ".join(f"{src['file']}: {src['count']} pairs" for src in report["sources"]))
    for warning in report["warnings"]:
        console.print(f"warning: {warning}")
    if push_to_hub:
        try:
            commit = built.push_to_hub(push_to_hub)
        except Exception as err:  # the network went away during the build: the direction is saved all the same
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"{out}: the direction is saved there, but the upload to {push_to_hub} failed ({first}); push it later "
                f"with `python -c \"from legend.directions import Direction; Direction.load('{out}').push_to_hub("
                f"'{push_to_hub}')\"`"
            ) from None
        console.print(f"pushed to the Hub: {getattr(commit, 'commit_url', None) or push_to_hub}")


def _check_template_room(spec: Any, template: str, max_length: int) -> None:
    """Before the model loads: --max-length must leave room for text in the template (the tokenizer alone is
    loaded for it; a model whose tokenizer does not load reports that when it loads)."""
    from legend.encoding import check_max_length
    from legend.models import load_tokenizer

    try:
        tokenizer = load_tokenizer(spec.name or "default", trust_remote_code=spec.trust_remote_code)
    except Exception:
        return
    check_max_length(tokenizer, template, max_length)


def _print_selection(selection: dict[str, Any], candidates: int) -> None:
    chosen = selection["chosen"]
    line = (
        f"selected layer {chosen['layer']}, pooling {chosen['pooling']}, {chosen['estimator']} among {candidates} "
        f"candidates (by {selection['by']}; fixed: {selection['fixed'] or 'nothing'})"
    )
    if selection["by"] == "preferences":
        line += (
            f"; dev agreement {selection['dev_share_positive']:.3f} on {selection['n_dev']} pairs, "
            f"test agreement {_fmt(selection['test_share_positive'])} (AUC {_fmt(selection['test_auc'])}) "
            f"on {selection['n_test']} pairs"
        )
    console.print(line)
    stability = selection.get("stability")
    if stability:
        low, high = stability["range"]
        console.print(
            f"stability: {stability['share_in_band']:.0%} of {selection['n_resamples']} resamples of the contrast "
            f"pairs choose a layer within {len(selection['band']) // 2} of {chosen['layer']} "
            f"({stability['share_exact']:.0%} exactly; range {low}-{high}); "
            + (
                "the evidence is flat across the candidate layers, so the prior depth decided"
                if selection.get("evidence", {}).get("prior_decided")
                else "one band is clearly best"
            )
        )


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


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
