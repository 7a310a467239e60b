"""Reward-model commands: train-rm, eval-rm, ensemble-margins, compare-rm (see docs/rewards.md)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from legend.cli.app import app, spare_inputs, user_errors
from legend.cli.options import (
    BatchSize,
    ChosenColumn,
    Device,
    Dtype,
    LegacyColumns,
    Limit,
    MaxBatchTokens,
    OutFile,
    PromptColumn,
    Quiet,
    RejectedColumn,
    TrustRemoteCode,
    column_names,
    field_help,
)
from legend.rewards.fields import MarginFields, RewardFields

console = Console(stderr=False)
F = TypeVar("F", bound=Callable[..., Any])

# Options shared by every command that trains reward models (and by `legend dpo`), declared once; the
# help of legend's own fields is their documentation in legend.rewards.fields.
TRAINING = {"allow_extra_args": True, "ignore_unknown_options": True}  # other TRL fields pass through
RmModel = Annotated[str, typer.Option("--model", "-m", help=field_help(MarginFields, "model"))]
MarginColumn = Annotated[str, typer.Option(help=field_help(MarginFields, "margin_column"))]
Alpha = Annotated[float, typer.Option(help="Loss is -log σ(r_c − r_r − α·margin).")]
RmMaxLength = Annotated[
    int,
    typer.Option(min=2, help="Tokens per prompt ⊕ response; longer pairs lose their start (counted, never dropped)."),
]
Epochs = Annotated[float, typer.Option(min=0.0, help="Training epochs (TRL's num_train_epochs).")]
LearningRate = Annotated[Optional[float], typer.Option(help="Default: 1e-4 with --lora, 2e-5 without.")]
RmBatchSize = Annotated[int, typer.Option(min=1, help="Pairs per device batch (TRL's per_device_train_batch_size).")]
GradAccum = Annotated[int, typer.Option(min=1, help="Gradient accumulation steps.")]
Bf16 = Annotated[bool, typer.Option(help="bf16 mixed precision.")]
Lora = Annotated[bool, typer.Option(help=field_help(MarginFields, "lora") + " Merged into the model on save.")]
LoraR = Annotated[int, typer.Option(min=1, help=field_help(MarginFields, "lora_r") + " LoRA alpha is 2 × r.")]
TrainLayers = Annotated[Optional[int], typer.Option(min=0, help=field_help(RewardFields, "train_layers"))]
Seed = Annotated[int, typer.Option(help="Seed of the reward head init and data order (same for every run).")]
ExtraArg = Annotated[
    Optional[list[str]],
    typer.Option(
        "--arg",
        help="Another TRL config / TrainingArguments field as key=value; repeat (e.g. --arg warmup_steps=0.1). "
        "Unknown options pass through too (--warmup_steps 0.1).",
    ),
]
Template = Annotated[str, typer.Option(help=field_help(RewardFields, "template"))]

# Every option a training command may take, declared once: (parameter, annotation, default, config field).
# `training_options` gives a command the ones it names and passes their values as one mapping, keyed by the
# config field they set (the columns as prompt_column/chosen_column/rejected_column, --quiet as disable_tqdm).
TRAINING_OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "model": (RmModel, "default", "model"),
    "margin_column": (MarginColumn, "margin", "margin_column"),
    "alpha": (Alpha, 1.0, "alpha"),
    "max_length": (RmMaxLength, 512, "max_length"),
    "epochs": (Epochs, 1.0, "num_train_epochs"),
    "learning_rate": (LearningRate, None, "learning_rate"),
    "batch_size": (RmBatchSize, 8, "per_device_train_batch_size"),
    "grad_accum": (GradAccum, 1, "gradient_accumulation_steps"),
    "bf16": (Bf16, False, "bf16"),
    "lora": (Lora, False, "lora"),
    "lora_r": (LoraR, 16, "lora_r"),
    "train_layers": (TrainLayers, None, "train_layers"),
    "seed": (Seed, 0, "seed"),
    "template": (Template, "auto", "template"),
    "trust_remote_code": (TrustRemoteCode, False, "trust_remote_code"),
}
COLUMN_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("prompt_column", PromptColumn),
    ("chosen_column", ChosenColumn),
    ("rejected_column", RejectedColumn),
    ("columns", LegacyColumns),
)


def training_options(*names: str, **overrides: Any) -> Callable[[F], F]:
    """Give a training command the options `names` of `TRAINING_OPTIONS` (plus --arg, the column options and
    --quiet), passed to it as `training: dict` keyed by config field; `overrides` maps a name to a default or to an
    (annotation, default) pair where the command's option differs. The command also receives `arg` (the extra
    TRL arguments) unchanged."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != "training"]
        added = []
        for name in names:
            annotation, default, _ = TRAINING_OPTIONS[name]
            if name in overrides:
                given = overrides[name]
                annotation, default = given if isinstance(given, tuple) else (annotation, given)
            added.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            )
        added += [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a) for n, a in COLUMN_OPTIONS
        ]
        added.append(inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Quiet))

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            training = {TRAINING_OPTIONS[name][2]: kwargs.pop(name) for name in names}
            columns = column_names(*(kwargs.pop(n) for n, _ in COLUMN_OPTIONS))
            training.update(zip(("prompt_column", "chosen_column", "rejected_column"), columns))
            training["disable_tqdm"] = kwargs.pop("quiet")
            return func(*args, training=training, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=kept + added)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


# The config field each training option (reward commands and dpo) sets under another name, for the message
# when an extra argument sets it again (the others are --field-name).
OPTION_NAMES = {
    "num_train_epochs": "--epochs",
    "per_device_train_batch_size": "--batch-size",
    "gradient_accumulation_steps": "--grad-accum",
    "disable_tqdm": "--quiet",
    "output_dir": "--out",
}


def extra_arguments(ctx: typer.Context, arg: Optional[list[str]]) -> list[str]:
    """The pass-through TRL arguments of a training command: unknown options, then every `--arg key=value`."""
    from legend.rewards.fields import pairs_to_args

    return [*ctx.args, *pairs_to_args(arg or [])]


def _reward_config(ctx: typer.Context, arg: Optional[list[str]], training: dict[str, Any], **options: Any):
    """The LegendRewardConfig of a reward command: its options (`training_options`) plus the pass-through TRL
    arguments."""
    from legend.rewards import reward_config

    return reward_config(None, extra_arguments(ctx, arg), option_names=OPTION_NAMES, **{**training, **options})


def _read_limited(data: str, limit: Optional[int], columns: Any):
    """Read and check the pairs (with --limit) before any weights are loaded."""
    from legend.data import load_table
    from legend.rewards import read_preferences

    table = load_table(data)
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    return read_preferences(table, columns=columns, source=data)


def _ci(values: list[float]) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


@app.command("train-rm", context_settings=TRAINING)
@user_errors
@training_options(*TRAINING_OPTIONS)
def train_rm(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Annotated preference data (output of `legend annotate`), any layout.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model, tokenizer and legend_rm.json.")],
    eval_data: Annotated[Optional[str], typer.Option(help="Preference data evaluated during training.")] = None,
    eval_steps: Annotated[
        Optional[int], typer.Option(min=1, help="Evaluate every N steps (default: each epoch).")
    ] = None,
    limit: Limit = None,
    arg: ExtraArg = None,
    training: Any = None,
) -> None:
    """Train a reward model with TRL's RewardTrainer; the loss offset is α × the margin column.

    Other RewardConfig / TrainingArguments fields pass through (`--warmup_steps 0.1` or `--arg warmup_steps=0.1`).
    """
    spare_inputs([data, eval_data, training["model"]], folders=(out,))
    from legend.rewards import train_reward_model

    config = _reward_config(ctx, arg, training, eval_steps=eval_steps)
    prefs = _read_limited(data, limit, config.columns)
    trained = train_reward_model(prefs, config, eval_data=eval_data, out=out)
    report = trained.report
    accuracy = report["eval"].get("eval_accuracy")
    console.print(
        f"trained on {report['n_pairs']} pairs ({report['n_truncated_pairs']} truncated from the left, "
        f"{report['n_left_out']} left out) in {report['train_seconds']:.1f} s; final train loss "
        f"{report['train_loss']:.4f}"
        + (f"; eval accuracy {accuracy:.3f}" if accuracy is not None else "")
        + f"; saved to {out}"
    )


@app.command("eval-rm")
@user_errors
def eval_rm(
    model: Annotated[str, typer.Option("--model", "-m", help="Reward model folder (from train-rm) or HF id.")],
    data: Annotated[str, typer.Option(help="Preference data to score.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", "--json", help="JSON report.")] = None,
    level_column: Annotated[
        str, typer.Option(help="Break accuracy down by this column when present (none: off).")
    ] = "margin",
    max_length: Annotated[
        Optional[int], typer.Option(min=2, help="Default: the one the model was trained with.")
    ] = None,
    bootstrap: Annotated[int, typer.Option(min=10, help="Bootstrap resamples for the 95% CI.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples.")] = 0,
    prompt_column: PromptColumn = None,
    chosen_column: ChosenColumn = None,
    rejected_column: RejectedColumn = None,
    columns: LegacyColumns = None,
    limit: Limit = None,
    batch_size: BatchSize = 16,
    max_batch_tokens: MaxBatchTokens = 16384,
    dtype: Dtype = "float32",
    device: Device = None,
    trust_remote_code: TrustRemoteCode = False,
    quiet: Quiet = False,
) -> None:
    """Pairwise accuracy (r_chosen > r_rejected) with a bootstrap 95% CI, by margin level too."""
    spare_inputs([data, model], files=(out,))
    from legend.data import ColumnNames
    from legend.io import write_json
    from legend.rewards import EvalSettings, evaluate_reward_model, load_reward_model

    prompt, chosen, rejected = column_names(prompt_column, chosen_column, rejected_column, columns)
    settings = EvalSettings(
        max_length=max_length,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        margin_column=None if level_column.lower() == "none" else level_column,
        n_bootstrap=bootstrap,
        seed=seed,
        columns=ColumnNames(prompt=prompt, chosen=chosen, rejected=rejected),
        progress=not quiet,
    )
    prefs = _read_limited(data, limit, settings.columns)
    if settings.margin_column and settings.margin_column in prefs.table.column_names:
        prefs.column(settings.margin_column)  # a bad level value fails here, before the model is loaded
    scorer = load_reward_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    report = evaluate_reward_model(scorer, prefs, settings)
    report["model"] = model
    if out is not None:
        write_json(report, out)
    table_out = Table(title=f"reward model {model} on {report['n']} pairs")
    for name in ("group", "n", "accuracy", "95% CI"):
        table_out.add_column(name)
    table_out.add_row("all", str(report["n"]), f"{report['accuracy']:.3f}", _ci(report["ci95"]))
    for level, row in (report.get("by_level") or {}).items():
        table_out.add_row(
            f"{report['level_column']} = {level}", str(row["n"]), f"{row['accuracy']:.3f}", _ci(row["ci95"])
        )
    console.print(table_out)


@app.command("ensemble-margins", context_settings=TRAINING)
@user_errors
@training_options(
    "model",
    "max_length",
    "epochs",
    "learning_rate",
    "batch_size",
    "grad_accum",
    "bf16",
    "lora",
    "lora_r",
    "train_layers",
    "seed",
    "template",
    "trust_remote_code",
)
def ensemble_margins_command(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Preference data (any layout).")],
    out: OutFile,
    k: Annotated[int, typer.Option("--k", "-k", min=2, help="Number of folds = reward models.")] = 4,
    scoring: Annotated[
        str, typer.Option(help="oof (each pair scored by the model that did not see it) | mean (all K models).")
    ] = "oof",
    column: Annotated[
        str, typer.Option(help="Binned column name; the raw gap goes to <column>_raw.")
    ] = "margin_ensemble",
    levels: Annotated[int, typer.Option(min=1)] = 4,
    limit: Limit = None,
    arg: ExtraArg = None,
    training: Any = None,
) -> None:
    """The RewardEnsemble@K baseline: margins from K-fold reward models; cost written to <out>.ensemble.json."""
    spare_inputs([data, training["model"]], tables=(out,))
    from legend.rewards import EnsembleSettings, ensemble_file

    reward = _reward_config(ctx, arg, training, margin_column="none")
    result = ensemble_file(
        data,
        out,
        reward,
        EnsembleSettings(k=k, scoring=scoring, column=column, levels=levels, seed=training["seed"]),
        limit=limit,
    )
    report = result.report
    console.print(
        f"{report['method']} ({report['scoring']}): {report['rows']} pairs in {report['seconds']:.1f} s "
        f"(train {report['train_seconds']:.1f} s, score {report['score_seconds']:.1f} s; "
        f"{report['forward_backward_tokens']} fwd+bwd tokens, {report['forward_only_tokens']} fwd tokens); "
        f"share of positive gaps {report['margin_raw'].get('share_positive', float('nan')):.3f}; "
        f"wrote {out}"
    )


@app.command("compare-rm", context_settings=TRAINING)
@user_errors
@training_options(
    "model",
    "alpha",
    "max_length",
    "epochs",
    "learning_rate",
    "batch_size",
    "grad_accum",
    "bf16",
    "lora",
    "lora_r",
    "train_layers",
    "seed",
    "template",
    "trust_remote_code",
)
def compare_rm(
    ctx: typer.Context,
    data: Annotated[
        str, typer.Option(help="Legend-annotated preference data (train split, or all with --test-fraction).")
    ],
    test: Annotated[
        Optional[str], typer.Option(help="Held-out preference data; default: a seeded split of --data.")
    ] = None,
    test_fraction: Annotated[float, typer.Option(min=0.05, max=0.9)] = 0.3,
    legend_column: Annotated[str, typer.Option(help="Legend margin column: margin (binned) | margin_raw.")] = "margin",
    ensemble_k: Annotated[
        Optional[int], typer.Option(min=2, help="Also run RewardEnsemble@K on the train split.")
    ] = None,
    ensemble_column: Annotated[
        str, typer.Option(help="Ensemble margin column (computed, or already in --data).")
    ] = "margin_ensemble",
    legend_sidecar: Annotated[
        Optional[Path],
        typer.Option(
            help="Legend metadata with the annotation time (default: the data's .legend/<file>.json, or an older "
            "<file>.legend.json)."
        ),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", "--json", help="JSON report.")] = None,
    limit: Limit = None,
    bootstrap: Annotated[int, typer.Option(min=10, help="Bootstrap resamples for the 95% CIs.")] = 2000,
    arg: ExtraArg = None,
    training: Any = None,
) -> None:
    """The paper's experiment: same backbone/seed/data without margins, with Legend margins (and ensemble ones)."""
    spare_inputs([data, test, legend_sidecar, training["model"]], files=(out,))
    from legend.io import write_json
    from legend.rewards import CompareSettings, compare_reward_models

    reward = _reward_config(ctx, arg, {**training, "disable_tqdm": True}, margin_column="none")
    report = compare_reward_models(
        _read_limited(data, limit, reward.columns),
        reward,
        CompareSettings(
            test_fraction=test_fraction,
            split_seed=training["seed"],
            legend_column=legend_column,
            ensemble_column=ensemble_column,
            ensemble_k=ensemble_k,
            n_bootstrap=bootstrap,
        ),
        test=test,
        legend_sidecar=legend_sidecar if legend_sidecar else _default_sidecar(data),
    )
    if out is not None:
        write_json(report, out)
    print_comparison(report)


def _default_sidecar(data: str) -> Optional[Path]:
    from legend.annotation import find_sidecar

    return find_sidecar(data)


def print_comparison(report: dict[str, Any]) -> None:
    """One table: accuracy, 95% CI, paired difference to Bradley–Terry, train time; then the cost ratio."""
    table = Table(title=f"reward models: {report['n_train']} train pairs, {report['n_test']} held-out pairs")
    for name in ("run", "margin", "accuracy", "95% CI", "Δ vs BT [95% CI]", "train s"):
        table.add_column(name)
    for row in report["runs"]:
        delta = f"{row['delta_vs_bt']:+.3f} {_ci(row['delta_ci95'])}" if "delta_vs_bt" in row else ""
        table.add_row(
            row["run"],
            row["margin_column"] or "-",
            f"{row['accuracy']:.3f}",
            _ci(row["ci95"]),
            delta,
            f"{row['train_seconds']:.1f}",
        )
    console.print(table)
    cost = report["cost"]
    if cost["legend"]:
        console.print(
            f"Legend annotation: {cost['legend']['seconds_per_pair']:.3f} s/pair "
            f"({cost['legend']['seconds_for_train_pairs']:.1f} s for the train pairs; from {cost['legend']['sidecar']})"
        )
    if cost["ensemble"]:
        console.print(
            f"RewardEnsemble@{cost['ensemble']['k']}: {cost['ensemble']['seconds']:.1f} s "
            f"({cost['ensemble']['forward_backward_tokens']} fwd+bwd tokens)"
        )
    if cost["ratio_ensemble_over_legend"] is not None:
        console.print(
            f"cost ratio RewardEnsemble@{cost['ensemble']['k']} / Legend: "
            f"{cost['ratio_ensemble_over_legend']:.1f}x (same data, same machine)"
        )
