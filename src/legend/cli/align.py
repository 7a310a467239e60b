"""Alignment commands: best-of-n (compare reward models by win rate) and margin-aware DPO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from legend.cli.app import app, spare_inputs, user_errors
from legend.cli.options import (
    BatchSize,
    Device,
    Dtype,
    Limit,
    Quiet,
    TrustRemoteCode,
    field_help,
)
from legend.cli.rewards import OPTION_NAMES, TRAINING, ExtraArg, extra_arguments, training_options
from legend.rewards.fields import DPOFields, MarginFields

console = Console(stderr=False)


def parse_ns(text: str) -> list[int]:
    """'1,2,4,8,16' -> [1, 2, 4, 8, 16] (sorted, unique, each >= 1)."""
    try:
        ns = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--n: expected comma-separated whole numbers, got {text!r}") from None
    if not ns or ns[0] < 1:
        raise ValueError(f"--n: every n must be at least 1, got {text!r}")
    return ns


def _names(specs: list[str]) -> list[str]:
    """Short display names (folder names) when they are unique, else the specs as given."""
    short = [Path(spec).name or spec for spec in specs]
    return short if len(set(short)) == len(short) else list(specs)


def print_best_of_n(report: dict[str, Any]) -> None:
    table = Table(title=f"best-of-n: {report['n_prompts']} prompts, judge: {report['judge']}")
    table.add_column("n", justify="right")
    for name in report["selectors"]:
        table.add_column(f"{name}\njudge mean of pick", justify="right")
    challengers = report["selectors"][1:]
    for name in challengers:
        table.add_column(f"{name} vs {report['baseline']}\nwin rate [95% CI] (W/T/L)", justify="right")
    for n in report["ns"]:
        cells = [str(n)] + [f"{report['judge_mean_of_pick'][s][str(n)]:.4g}" for s in report["selectors"]]
        for name in challengers:
            row = next(r for r in report["win_rates"] if r["challenger"] == name and r["n"] == n)
            cells.append(
                f"{row['win_rate']:.3f} [{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}] "
                f"({row['wins']}/{row['ties']}/{row['losses']})"
            )
        table.add_row(*cells)
    console.print(table)


@app.command("best-of-n")
@user_errors
def best_of_n(
    prompts: Annotated[
        str,
        typer.Option(
            help="Prompts: a preference dataset (its pairs' prompts, any layout legend reads) or a file of "
            "questions (AdvBench CSV, JSON list, ...)."
        ),
    ],
    reward_model: Annotated[
        list[str],
        typer.Option(
            "--reward-model",
            "-r",
            help="Reward model (AutoModelForSequenceClassification path or id); repeat to compare. The first "
            "is the baseline of the win rates.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON report.")],
    policy: Annotated[
        str,
        typer.Option(
            "--model", "-m", "--policy", help="Policy that samples the responses ('default' = embedded SmolLM2)."
        ),
    ] = "default",
    direction: Annotated[
        Optional[Path],
        typer.Option(help="Judge by the safety score: projection onto this direction (the default judge)."),
    ] = None,
    judge_model: Annotated[
        Optional[str], typer.Option(help="Judge by a reward model or classifier instead of a direction.")
    ] = None,
    judge_label: Annotated[
        str, typer.Option(help="Judge model's output column: an index or a label name (e.g. 'safe').")
    ] = "0",
    judge_lm: Annotated[
        Optional[str],
        typer.Option(help="Model that embeds for the direction judge; default: the one the direction was built with."),
    ] = None,
    n: Annotated[
        str, typer.Option("--n", help="Comma-separated n values; max(n) samples are drawn once per prompt.")
    ] = "1,2,4,8,16",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    column: Annotated[
        Optional[str], typer.Option(help="Question column (forces reading the prompts as questions).")
    ] = None,
    limit: Limit = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG plot; default: the report path with .png.")] = None,
    samples_out: Annotated[
        Optional[Path], typer.Option(help="Also write every sample with its scores (.jsonl).")
    ] = None,
    generate_batch_size: Annotated[
        int, typer.Option(min=1, help="Sequences per generate call (prompts x samples).")
    ] = 64,
    batch_size: BatchSize = 16,
    dtype: Dtype = "float32",
    device: Device = None,
    trust_remote_code: TrustRemoteCode = False,
    quiet: Quiet = False,
) -> None:
    """Best-of-n with each reward model; compare them by win rate under a judge (direction safety score by default)."""
    spare_inputs(
        [prompts, *reward_model, policy, direction, judge_model, judge_lm], files=(out, plot), tables=(samples_out,)
    )
    import datasets

    from legend.align.best_of_n import SamplingConfig, plot_report, read_prompts, run_best_of_n
    from legend.align.scoring import DirectionScorer, RewardModelScorer
    from legend.directions import Direction
    from legend.io import write_json, write_table
    from legend.models import load_model

    ns = parse_ns(n)
    if (direction is None) == (judge_model is None):
        raise ValueError("give exactly one judge: --direction (safety score) or --judge-model")
    prompt_list = read_prompts(prompts, column=column, limit=limit)
    loaded = Direction.load(direction) if direction is not None else None  # read before any weights
    lm = load_model(policy, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    selectors = [
        RewardModelScorer.load(spec, name=name, dtype=dtype, device=device, batch_size=batch_size)
        for spec, name in zip(reward_model, _names(reward_model))
    ]
    if loaded is not None:
        annotator_spec = judge_lm or loaded.model_id
        annotator = (
            lm
            if annotator_spec == policy
            else load_model(annotator_spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        )
        judge: DirectionScorer | RewardModelScorer = DirectionScorer(
            annotator, loaded, name=f"direction:{loaded.name}", batch_size=batch_size
        )
    else:
        assert judge_model is not None  # exactly one judge was checked above
        judge = RewardModelScorer.load(
            judge_model,
            name=f"judge:{Path(judge_model).name or judge_model}",
            label=judge_label,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
        )
    sampling = SamplingConfig(
        n=max(ns),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=generate_batch_size,
        seed=seed,
        progress=not quiet,
    )
    run = run_best_of_n(lm, prompt_list, selectors, judge, ns=ns, sampling=sampling)
    report = run.report.to_dict()
    report.update(prompts_source=prompts, reward_models=dict(zip(run.report.selectors, reward_model)))
    write_json(report, out)
    plot_path = plot or out.with_suffix(".png")
    plot_report(run.report, plot_path)
    if samples_out is not None:
        write_table(datasets.Dataset.from_list(run.sample_rows()), samples_out)
    print_best_of_n(report)
    console.print(
        f"report: {out}; plot: {plot_path}"
        + (f"; samples: {samples_out}" if samples_out else "")
        + f"; sampling took {report['timings']['sample_seconds']:.1f} s"
    )


DPO_OPTIONS = {
    "model": (
        Annotated[
            str,
            typer.Option("--model", "-m", help=field_help(MarginFields, "model") + " The reference is a frozen copy."),
        ],
        "default",
    ),
    "alpha": (
        Annotated[float, typer.Option(help="Offset scale: loss = -log σ(β·(Δπ − Δref) − α·f(margin)). 0 = plain DPO.")],
        1.0,
    ),
    "learning_rate": (Annotated[float, typer.Option(help="Learning rate.")], 5e-6),
    "epochs": (Annotated[float, typer.Option(help="Training epochs (ignored when --max-steps is set).")], 1.0),
    "batch_size": (Annotated[int, typer.Option(min=1, help="Pairs per device per step.")], 4),
    "max_length": (
        Annotated[int, typer.Option(min=2, help="Longest prompt + answer in tokens (TRL truncates the end).")],
        512,
    ),
    "seed": (Annotated[int, typer.Option(help="Seed of the data order and the held-out split.")], 0),
}


@app.command(context_settings=TRAINING)
@user_errors
@training_options(
    "model",
    "alpha",
    "margin_column",
    "learning_rate",
    "epochs",
    "batch_size",
    "grad_accum",
    "max_length",
    "lora",
    "lora_r",
    "seed",
    "trust_remote_code",
    **DPO_OPTIONS,
)
def dpo(
    ctx: typer.Context,
    data: Annotated[
        str, typer.Option(help="Preference data annotated by `legend annotate` (any layout legend reads).")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output folder for the trained policy (or LoRA adapter) and legend_dpo.json."),
    ],
    offset_transform: Annotated[str, typer.Option(help=field_help(DPOFields, "offset_transform"))] = "identity",
    beta: Annotated[float, typer.Option(help="DPO β.")] = 0.1,
    max_steps: Annotated[int, typer.Option(help="Stop after this many optimiser steps (-1: use --epochs).")] = -1,
    eval_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help=field_help(DPOFields, "eval_fraction"))] = 0.0,
    limit: Limit = None,
    arg: ExtraArg = None,
    training: Any = None,
) -> None:
    """Margin-aware DPO (ODPO offset from Legend margins) on TRL's DPOTrainer; other TRL/transformers
    arguments pass through, e.g. `--warmup_steps 0.1 --bf16 false --gradient_checkpointing false`."""
    spare_inputs([data, training["model"]], folders=(out,))
    from legend.align.dpo import dpo_config, train_dpo

    config = dpo_config(
        out,
        extra_arguments(ctx, arg),
        option_names=OPTION_NAMES,
        defaults={"report_to": "none", "logging_steps": 1, "eval_strategy": "epoch" if eval_fraction else "no"},
        **{**training, "disable_tqdm": True if training["disable_tqdm"] else None},
        offset_transform=offset_transform,
        beta=beta,
        max_steps=max_steps,
        eval_fraction=eval_fraction,
    )
    summary = train_dpo(data, config, limit=limit)  # reads and checks the pairs before loading weights
    losses = [entry["loss"] for entry in summary["log_history"] if "loss" in entry]
    margins = [entry["rewards/margins"] for entry in summary["log_history"] if "rewards/margins" in entry]
    offset = summary["offset"]
    mode = (
        f"offset on: α={offset['alpha']:g} · {offset['transform']}({offset['column']}), mean offset "
        f"{offset['mean']:.3g}"
        if offset["on"]
        else "plain DPO (offset off)"
    )
    console.print(
        f"dpo: {summary['pairs_train']} pairs, {summary['steps']} steps in {summary['train_seconds']:.1f} s; "
        f"{mode}; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        if losses
        else "no steps logged"
    )
    if margins:
        console.print(f"rewards/margins (β·gap − offset) {margins[0]:.4f} -> {margins[-1]:.4f}; saved to {out}")
