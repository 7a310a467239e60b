"""Core commands: induce, direction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from legend.cli.app import app, spare_inputs, user_errors
from legend.cli.options import (
    BatchSize,
    Limit,
    MaxLength,
    OutFile,
    Quiet,
    model_options,
)
from legend.registries import ESTIMATORS, POOLINGS

console = Console(stderr=False)


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
        f"candidates (by {selection['by']}; fixed: {_fixed(selection['fixed'])})"
    )
    if selection["by"] == "preferences":
        line += (
            f"; dev agreement {selection['dev_share_positive']:.3f} on {selection['n_dev']} pairs, "
            f"test agreement {_fmt(selection['test_share_positive'])} (AUC {_fmt(selection['test_auc'])}) "
            f"on {selection['n_test']} pairs"
        )
    console.print(line)
    from legend.directions.card import stability_sentence  # torch: imported when a direction was built

    sentence = stability_sentence(selection, chosen["layer"])
    if sentence:
        console.print(f"stability: {sentence}")


def _fixed(fixed: dict[str, Any] | None) -> str:
    """What the selection did not choose, as words: "pooling mean, estimator mean_difference"."""
    return ", ".join(f"{key} {value}" for key, value in (fixed or {}).items()) or "nothing"


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"
