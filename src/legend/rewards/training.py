"""Train a reward model on a (Legend-annotated) preference dataset with TRL's RewardTrainer.

The loss is TRL's own: when a `margin` column reaches the batch, RewardTrainer computes
`-log σ(r_c − r_r − margin)`. We only choose what goes into that column: `α · <margin source>`
(Legend's binned `margin`, its `margin_raw`, an ensemble margin, ...) or nothing at all for plain
Bradley–Terry.

Pairs are tokenised here, not by TRL, with `legend.encoding.tokenize_items` (chat template when the
tokenizer has one, truncated from the left so the end of the response is always kept). TRL then
sees ready `chosen_ids`/`rejected_ids`, so its "drop pairs longer than max_length" filter has
nothing to drop; we check that every pair reached the trainer and report how many were truncated.

Settings: one `LegendRewardConfig`, which is TRL's `RewardConfig` with legend's fields
(`legend.rewards.fields.RewardFields`) mixed in; `reward_config` builds one from keyword options
plus TRL command-line arguments, the same way `legend.align.dpo.dpo_config` builds a DPO config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from trl import RewardConfig

from .. import models
from ..data import ColumnNames, DataError, PairView, read_margin_column, read_pairs
from ..encoding import EncodeConfig, tokenize_items
from ..io import atomic_folder, write_json
from ..models import load_pretrained
from .fields import RewardFields, pairs_to_args, parse_config

REPORT_FILE = "legend_rm.json"
"""The training report saved inside the model folder (also read back by `evaluate`)."""


def _cuda() -> bool:
    return torch.cuda.is_available()


def _no_cuda() -> bool:
    return not torch.cuda.is_available()


@dataclass
class LegendRewardConfig(RewardConfig, RewardFields):
    """TRL's RewardConfig plus legend's fields (`RewardFields`): the one settings object of reward training.

    Every RewardConfig / TrainingArguments field is here under its TRL name; legend changes a few
    defaults (below) to fit small runs on one machine. Checked once here; saved whole in `legend_rm.json`.
    `learning_rate=None` resolves to 1e-4 with LoRA, 2e-5 without (so `dataclasses.replace` keeps it).
    """

    learning_rate: float | None = field(  # type: ignore[assignment]  # None: resolved in __post_init__
        default=None, metadata={"help": "Default: 1e-4 with --lora, 2e-5 without."}
    )
    max_length: int | None = field(
        default=512,
        metadata={
            "help": "Tokens per prompt + response; longer pairs lose their start (counted, never dropped, so "
            "TRL's length filter has nothing to drop)."
        },
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Pairs per device batch."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Pairs per device batch in evaluation."})
    seed: int = field(default=0, metadata={"help": "Seed of the reward head init and data order."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Gradient checkpointing."})
    activation_checkpointing: bool | None = field(default=False, metadata={"help": "Activation checkpointing."})
    save_strategy: str = field(
        default="no", metadata={"help": "Checkpoints during training (the model is saved at the end)."}
    )
    disable_tqdm: bool | None = field(default=True, metadata={"help": "No progress bars."})
    use_cpu: bool = field(default_factory=_no_cuda, metadata={"help": "Train on the CPU (default: unless CUDA)."})
    dataloader_pin_memory: bool = field(default_factory=_cuda, metadata={"help": "Pin memory (default: with CUDA)."})

    def __post_init__(self) -> None:
        self.check_reward_fields()
        if self.learning_rate is None:
            self.learning_rate = 1e-4 if self.lora else 2e-5
        if self.max_length is None or self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens, got {self.max_length}")
        if self.data_seed is None:
            self.data_seed = self.seed
        super().__post_init__()

    @property
    def max_tokens(self) -> int:
        """`max_length` as an int (never None once checked)."""
        return int(self.max_length or 0)

    def to_report(self) -> dict[str, Any]:
        """The JSON-able config saved in `legend_rm.json` (TrainingArguments' own `to_dict`)."""
        return self.to_dict()


@dataclass
class PreferenceSet:
    """The pairs of a preference table as the reward code needs them: texts plus optional columns."""

    views: list[PairView]
    table: datasets.Dataset
    source: str

    def __len__(self) -> int:
        return len(self.views)

    def column(self, name: str) -> np.ndarray:
        """A numeric column as float64 (`read_margin_column`): a missing column or a bad value is a DataError."""
        return read_margin_column(self.table, name, source=self.source, instead="choose another margin column")

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
    """Read preference pairs in any layout registered in `legend.data.LAYOUTS` (`read_pairs`)."""
    if isinstance(data, PreferenceSet):
        return data
    pairs = read_pairs(data, columns, split=split, source_name=source)
    return PreferenceSet(views=pairs.views, table=pairs.table, source=pairs.source)


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


def reward_config(
    output_dir: str | os.PathLike | None = None,
    extra_args: Sequence[str] = (),
    *,
    option_names: Mapping[str, str] | None = None,
    **options: Any,
) -> LegendRewardConfig:
    """A LegendRewardConfig from keyword options plus TRL/transformers command-line arguments.

    `extra_args` (`["--warmup_steps", "0.1", "--lr_scheduler_type", "cosine"]`) are typed by transformers'
    own argument parser, as on any HF training command line; a field given both ways is refused.

    >>> reward_config(None, ["--warmup_steps", "0.25"], alpha=0.5).warmup_steps
    0.25
    """
    if output_dir is not None:
        options["output_dir"] = str(output_dir)
    return parse_config(LegendRewardConfig, extra_args, option_names=option_names, **options)


def parse_extra_args(pairs: Sequence[str]) -> list[str]:
    """`key=value` strings (from repeated `--arg`) as `--key value` arguments for `reward_config`."""
    return pairs_to_args(pairs)


def trainer_args(config: LegendRewardConfig, output_dir: str, *, has_eval: bool) -> LegendRewardConfig:
    """The config RewardTrainer runs with: `output_dir` set, and evaluation on when there is eval data."""
    changes: dict[str, Any] = {"output_dir": output_dir}
    if has_eval and config.eval_strategy == "no":
        changes["eval_strategy"] = "steps" if config.eval_steps else "epoch"
    return dataclasses.replace(config, **changes)


def lora_config(config: LegendRewardConfig) -> Any:
    from peft import LoraConfig, TaskType

    # The reward head is new: it must be trained in full, not through an adapter.
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora_r,
        lora_alpha=config.lora_alpha or 2 * config.lora_r,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        modules_to_save=["score"],
    )


def build_trainer(
    config: LegendRewardConfig,
    train: TokenizedPairs,
    tokenizer: Any,
    output_dir: str,
    eval_pairs: TokenizedPairs | None = None,
    model: Any = None,
) -> Any:
    """A RewardTrainer over pre-tokenised pairs (the model is loaded from `config.model` unless given)."""
    from trl import RewardTrainer

    args = trainer_args(config, output_dir, has_eval=eval_pairs is not None)
    if model is None:
        model, _, _ = load_pretrained(
            config.model,
            head="reward",
            num_labels=1,
            dtype="float32",
            trust_remote_code=config.trust_remote_code,
            place=False,
        )
        model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train.dataset,
        eval_dataset=eval_pairs.dataset if eval_pairs is not None else None,
        processing_class=tokenizer,
        peft_config=lora_config(config) if config.lora else None,
    )
    if config.train_layers is not None:
        freeze_lower_layers(trainer.model, config.train_layers)
    if config.disable_tqdm:  # without progress bars transformers prints every log dict instead
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
    config: LegendRewardConfig | None = None,
    *,
    eval_data: datasets.Dataset | PreferenceSet | str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> TrainedRewardModel:
    """Train a reward model with TRL's RewardTrainer; save it (and `legend_rm.json`) to `out` if given.

    The loss is `-log σ(r_c − r_r − α·m)` with m from `config.margin_column` (None: α·m = 0).
    Every pair is trained on: long ones are truncated from the left, and counted in the report.
    The data (and the margin column) are read and checked before the model is loaded.
    """
    config = config if config is not None else LegendRewardConfig()
    max_length = config.max_tokens
    prefs = read_preferences(train, columns=config.columns)
    if len(prefs) == 0:
        raise DataError("no preference pairs to train on", source=prefs.source)
    margins = margin_values(prefs, config.margin_column, config.alpha)
    eval_prefs = read_preferences(eval_data, columns=config.columns) if eval_data is not None else None
    eval_margins = margin_values(eval_prefs, config.margin_column, config.alpha) if eval_prefs is not None else None
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    train_pairs = tokenize_pairs(
        tokenizer, prefs.views, max_length=max_length, template=config.template, margins=margins
    )
    eval_pairs = None
    if eval_prefs is not None:
        eval_pairs = tokenize_pairs(
            tokenizer, eval_prefs.views, max_length=max_length, template=config.template, margins=eval_margins
        )
    with tempfile.TemporaryDirectory(prefix="legend-rm-") as scratch:
        trainer = build_trainer(config, train_pairs, tokenizer, scratch, eval_pairs)
        reached = len(trainer.train_dataset)
        if reached != len(prefs):  # TRL filters by length; our pairs fit, so this must never happen
            raise RuntimeError(f"{len(prefs) - reached} pairs were dropped before training")
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
        eval_metrics = trainer.evaluate() if eval_pairs is not None else {}
    model = trainer.model
    trainable = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    if config.lora:
        model = model.merge_and_unload()
    model.eval()
    settings = config.to_report()
    settings["output_dir"] = str(out) if out is not None else None
    report = {
        "model": config.model,
        "n_pairs": len(prefs),
        "n_truncated_pairs": train_pairs.n_truncated_pairs,
        "n_left_out": len(prefs) - reached,
        "source": prefs.source,
        "margin_column": config.margin_column,
        "alpha": config.alpha,
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
        "settings": settings,
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
