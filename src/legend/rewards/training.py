"""Train a reward model on a (Legend-annotated) preference dataset with TRL's RewardTrainer.

The loss is TRL's own: when a `margin` column reaches the batch, RewardTrainer computes
`-log σ(r_c − r_r − margin)`. We only choose what goes into that column: `α · <margin source>`
(Legend's binned `margin`, its `margin_raw`, an ensemble margin, ...) or nothing at all for plain
Bradley–Terry.

Pairs are tokenised here, not by TRL, with `legend.encoding.tokenize_items` (chat template when the
tokenizer has one, truncated from the left so the end of the response is always kept). TRL then
sees ready `chosen_ids`/`rejected_ids`, so its "drop pairs longer than max_length" filter has
nothing to drop; we check that every pair reached the trainer and report how many were truncated.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .. import models
from ..data import ColumnNames, DataError, PairView, detect_layout, load_table, pair_views
from ..encoding import EncodeConfig, tokenize_items
from ..io import atomic_folder, write_json
from ..models import DEFAULT_MODEL, load_pretrained

REPORT_FILE = "legend_rm.json"
"""The training report saved inside the model folder (also read back by `evaluate`)."""


@dataclass(frozen=True)
class RewardSettings:
    """How to train a reward model. Created once at the edge (CLI or API call) and passed down."""

    model: str = DEFAULT_MODEL  # HF id, local path, or "default" (embedded SmolLM2)
    margin_column: str | None = "margin"  # None: plain Bradley–Terry
    alpha: float = 1.0  # loss offset is alpha * margin
    max_length: int = 512  # tokens per (prompt ⊕ response); longer ones lose their start
    template: str = "auto"  # auto | chat | plain (see legend.encoding.render)
    epochs: float = 1.0
    learning_rate: float | None = None  # default: 1e-4 with LoRA, 2e-5 without
    batch_size: int = 8
    grad_accum: int = 1
    eval_batch_size: int = 16
    eval_steps: int | None = None  # evaluate every N steps; default: once per epoch (if eval data)
    bf16: bool = False
    lora: bool = False
    train_layers: int | None = None  # train only the last N blocks (+ final norm + head); None: all
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    seed: int = 0
    extra_args: Mapping[str, str] = field(default_factory=dict)  # other RewardConfig / TrainingArguments
    trust_remote_code: bool = False
    columns: ColumnNames = field(default_factory=ColumnNames)
    progress: bool = False

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.lora else 2e-5


@dataclass
class PreferenceSet:
    """The pairs of a preference table as the reward code needs them: texts plus optional columns."""

    views: list[PairView]
    table: datasets.Dataset
    source: str

    def __len__(self) -> int:
        return len(self.views)

    def column(self, name: str) -> np.ndarray:
        """A numeric column as float64; a missing column or a non-finite value is a DataError."""
        if name not in self.table.column_names:
            raise DataError(
                f"no column {name!r} (columns: {', '.join(self.table.column_names)}); "
                "annotate the data with `legend annotate` or choose another margin column",
                source=self.source,
            )
        values = self.table[name]
        out = np.empty(len(values), dtype=np.float64)
        for row, value in enumerate(values, start=1):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise DataError(
                    f"row {row}: field {name!r}: expected a finite number, got {value!r}", source=self.source
                )
            out[row - 1] = float(value)
        return out

    def select(self, indices: Sequence[int] | np.ndarray) -> PreferenceSet:
        indices = [int(i) for i in indices]
        return PreferenceSet(
            views=[self.views[i] for i in indices], table=self.table.select(indices), source=self.source
        )


def read_preferences(
    data: datasets.Dataset | PreferenceSet | str | os.PathLike,
    *,
    columns: ColumnNames = ColumnNames(),
    split: str = "train",
    source: str | None = None,
) -> PreferenceSet:
    """Read any preference layout legend.data knows (explicit, conversational, hh, pku, implicit)."""
    if isinstance(data, PreferenceSet):
        return data
    if not isinstance(data, datasets.Dataset):
        source = source or str(data)
        data = load_table(data, split=split)
    source = source or "<dataset>"
    layout = detect_layout(data, columns, source=source)
    return PreferenceSet(views=pair_views(data, layout, columns, source=source), table=data, source=source)


@dataclass
class TokenizedPairs:
    """`chosen_ids`/`rejected_ids` (and `margin` when given) ready for RewardTrainer, with counts."""

    dataset: datasets.Dataset
    n_truncated_pairs: int  # pairs where chosen or rejected lost tokens from the left
    n_tokens: int  # chosen + rejected tokens, all pairs


def tokenize_pairs(
    tokenizer: Any,
    views: Sequence[PairView],
    *,
    max_length: int,
    template: str = "auto",
    margins: Sequence[float] | np.ndarray | None = None,
) -> TokenizedPairs:
    """Tokenise pairs the way `legend.encoding` does (template, left truncation), one row per pair."""
    config = EncodeConfig(max_length=max_length, template=template)
    items = [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views]
    tokens = tokenize_items(tokenizer, items, config)
    n = len(views)
    chosen, rejected = tokens[:n], tokens[n:]
    columns: dict[str, list[Any]] = {
        "chosen_ids": [list(t.ids) for t in chosen],
        "rejected_ids": [list(t.ids) for t in rejected],
    }
    if margins is not None:
        columns["margin"] = [float(m) for m in margins]
    truncated = sum(c.truncated or r.truncated for c, r in zip(chosen, rejected))
    n_tokens = sum(len(t.ids) for t in tokens)
    return TokenizedPairs(datasets.Dataset.from_dict(columns), int(truncated), int(n_tokens))


def load_tokenizer(model: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a reward model's backbone, with the reward pad-token policy (`ensure_pad_token`)."""
    return models.load_tokenizer(model, reward_head=True, trust_remote_code=trust_remote_code)


def margin_values(prefs: PreferenceSet, column: str | None, alpha: float) -> np.ndarray | None:
    """alpha * the chosen margin column, or None for plain Bradley–Terry."""
    if column is None:
        return None
    return alpha * prefs.column(column)


@dataclass
class TrainedRewardModel:
    """The trained model (merged if LoRA), its tokenizer, and the JSON-able training report."""

    model: Any
    tokenizer: Any
    report: dict[str, Any]


_OWNED_ARGS = {
    "max_length": "--max-length",
    "output_dir": "--out",
    "seed": "--seed",
    "num_train_epochs": "--epochs",
    "learning_rate": "--learning-rate",
    "per_device_train_batch_size": "--batch-size",
    "gradient_accumulation_steps": "--grad-accum",
    "bf16": "--bf16",
}


def parse_extra_args(pairs: Sequence[str]) -> dict[str, str]:
    """`key=value` strings (from repeated `--arg`) into a dict; the values are typed by `reward_config`."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--arg {pair!r}: expected key=value (a RewardConfig / TrainingArguments field)")
        out[key.strip().replace("-", "_")] = value
    return out


def reward_config(settings: RewardSettings, output_dir: str, *, has_eval: bool) -> Any:
    """Build TRL's RewardConfig from our settings plus the pass-through `extra_args`.

    The extra values are typed by transformers' own argument parser, so `--arg warmup_steps=0.1` or
    `--arg lr_scheduler_type=cosine` behave as on any HF training command line.
    """
    import torch
    from transformers import HfArgumentParser
    from trl import RewardConfig

    cuda = torch.cuda.is_available()

    clash = [f"{k} (use {_OWNED_ARGS[k]})" for k in settings.extra_args if k in _OWNED_ARGS]
    if clash:
        raise ValueError(f"--arg: set {', '.join(clash)} with the command's own option")
    base: dict[str, Any] = dict(
        output_dir=output_dir,
        seed=settings.seed,
        data_seed=settings.seed,
        num_train_epochs=settings.epochs,
        learning_rate=settings.resolved_learning_rate(),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        bf16=settings.bf16,
        fp16=False,
        activation_checkpointing=False,
        gradient_checkpointing=None,
        max_length=None,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=not settings.progress,
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
    )
    if has_eval:
        base.update(eval_strategy="steps" if settings.eval_steps else "epoch")
        if settings.eval_steps:
            base["eval_steps"] = settings.eval_steps
    if settings.extra_args:
        # The parser builds a whole config: give it ours where its defaults would fail (bf16 on CPU).
        argv = [
            "--output_dir",
            output_dir,
            "--bf16",
            str(settings.bf16),
            "--use_cpu",
            str(not cuda),
            "--activation_checkpointing",
            "False",
        ]
        for key, value in settings.extra_args.items():
            argv += [f"--{key}", value]
        parser = HfArgumentParser(RewardConfig)  # type: ignore[arg-type]  # RewardConfig is a dataclass
        try:
            (parsed,) = parser.parse_args_into_dataclasses(args=argv)
        except (SystemExit, ValueError) as err:
            detail = str(err).splitlines()[0] if isinstance(err, ValueError) else "see the message above"
            raise ValueError(
                f"--arg: not a valid RewardConfig/TrainingArguments setting among "
                f"{', '.join(settings.extra_args)} ({detail})"
            ) from None
        base.update({key: getattr(parsed, key) for key in settings.extra_args})
    return RewardConfig(**base)


def lora_config(settings: RewardSettings) -> Any:
    from peft import LoraConfig, TaskType

    # The reward head is new: it must be trained in full, not through an adapter.
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        modules_to_save=["score"],
    )


def build_trainer(
    settings: RewardSettings,
    train: TokenizedPairs,
    tokenizer: Any,
    output_dir: str,
    eval_pairs: TokenizedPairs | None = None,
    model: Any = None,
) -> Any:
    """A RewardTrainer over pre-tokenised pairs (the model is loaded from `settings.model` unless given)."""
    from trl import RewardTrainer

    if settings.lora and settings.train_layers is not None:
        raise ValueError("choose either LoRA or --train-layers, not both")
    args = reward_config(settings, output_dir, has_eval=eval_pairs is not None)
    if model is None:
        model, _, _ = load_pretrained(
            settings.model,
            head="reward",
            num_labels=1,
            dtype="float32",
            trust_remote_code=settings.trust_remote_code,
            place=False,
        )
        model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train.dataset,
        eval_dataset=eval_pairs.dataset if eval_pairs is not None else None,
        processing_class=tokenizer,
        peft_config=lora_config(settings) if settings.lora else None,
    )
    if settings.train_layers is not None:
        freeze_lower_layers(trainer.model, settings.train_layers)
    if not settings.progress:  # without progress bars transformers prints every log dict instead
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def freeze_lower_layers(model: Any, keep: int) -> int:
    """Freeze everything but the last `keep` decoder blocks, the final norm and the reward head.

    Backward then stops `keep` blocks below the top: on a CPU this makes training several times
    cheaper (the forward pass remains). Returns the number of trainable parameters.
    """
    from ..encoding import find_blocks, find_final_norm

    prefix = model.base_model_prefix
    base = getattr(model, prefix)
    blocks = find_blocks(base, int(model.config.num_hidden_layers))
    if blocks is None or not 0 <= keep <= len(blocks):
        raise ValueError(f"--train-layers {keep}: cannot select the last {keep} decoder blocks of this model")
    for name, parameter in model.named_parameters():  # the head (outside the base model) stays trainable
        parameter.requires_grad_(not name.startswith(prefix + "."))
    top = list(blocks[len(blocks) - keep :]) if keep else []
    norm = find_final_norm(base)
    for module in top + ([norm] if norm is not None else []):
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_reward_model(
    train: datasets.Dataset | PreferenceSet | str | os.PathLike,
    settings: RewardSettings = RewardSettings(),
    *,
    eval_data: datasets.Dataset | PreferenceSet | str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> TrainedRewardModel:
    """Train a reward model with TRL's RewardTrainer; save it (and `legend_rm.json`) to `out` if given.

    The loss is `-log σ(r_c − r_r − α·m)` with m from `settings.margin_column` (None: α·m = 0).
    Every pair is trained on: long ones are truncated from the left, and counted in the report.
    """
    import torch

    prefs = read_preferences(train, columns=settings.columns)
    if len(prefs) == 0:
        raise DataError("no preference pairs to train on", source=prefs.source)
    tokenizer = load_tokenizer(settings.model, settings.trust_remote_code)
    margins = margin_values(prefs, settings.margin_column, settings.alpha)
    train_pairs = tokenize_pairs(
        tokenizer, prefs.views, max_length=settings.max_length, template=settings.template, margins=margins
    )
    eval_prefs = read_preferences(eval_data, columns=settings.columns) if eval_data is not None else None
    eval_pairs = None
    if eval_prefs is not None:
        eval_margins = margin_values(eval_prefs, settings.margin_column, settings.alpha)
        eval_pairs = tokenize_pairs(
            tokenizer,
            eval_prefs.views,
            max_length=settings.max_length,
            template=settings.template,
            margins=eval_margins,
        )
    with tempfile.TemporaryDirectory(prefix="legend-rm-") as scratch:
        trainer = build_trainer(settings, train_pairs, tokenizer, scratch, eval_pairs)
        reached = len(trainer.train_dataset)
        if reached != len(prefs):  # TRL filters by length; our pairs fit, so this must never happen
            raise RuntimeError(f"{len(prefs) - reached} pairs were dropped before training")
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
        eval_metrics = trainer.evaluate() if eval_pairs is not None else {}
    model = trainer.model
    trainable = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    if settings.lora:
        model = model.merge_and_unload()
    model.eval()
    report = {
        "model": settings.model,
        "n_pairs": len(prefs),
        "n_truncated_pairs": train_pairs.n_truncated_pairs,
        "n_left_out": len(prefs) - reached,
        "source": prefs.source,
        "margin_column": settings.margin_column,
        "alpha": settings.alpha,
        "margin_stats": _stats(margins) if margins is not None else None,
        "train_loss": float(result.training_loss),
        "train_seconds": round(seconds, 3),
        "steps": int(result.global_step),
        "trainable_parameters": trainable,
        "train_tokens": int(getattr(trainer, "_total_train_tokens", 0) or 0),
        "tokens_per_epoch": train_pairs.n_tokens,
        "eval": {k: float(v) for k, v in eval_metrics.items() if isinstance(v, (int, float))},
        "eval_pairs": len(eval_prefs) if eval_prefs is not None else 0,
        "log_history": trainer.state.log_history,
        "settings": _settings_dict(settings),
        "torch_threads": torch.get_num_threads(),
    }
    trained = TrainedRewardModel(model=model, tokenizer=tokenizer, report=report)
    if out is not None:
        save_reward_model(trained, out)
    return trained


def save_reward_model(trained: TrainedRewardModel, out: str | os.PathLike) -> None:
    """Save model + tokenizer + legend_rm.json to a folder, atomically (temp folder renamed over `out`)."""
    with atomic_folder(out) as tmp:
        trained.model.save_pretrained(tmp)
        trained.tokenizer.save_pretrained(tmp)
        write_json(trained.report, tmp / REPORT_FILE)


def read_training_report(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(model_dir) / REPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _stats(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _settings_dict(settings: RewardSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["extra_args"] = dict(settings.extra_args)
    data["learning_rate"] = settings.resolved_learning_rate()
    return data
