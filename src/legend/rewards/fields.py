"""Legend's own training fields, added to TRL's config classes (no TRL import here, so the CLI stays light).

One design for reward training and DPO: `legend.rewards.training.LegendRewardConfig` is TRL's
`RewardConfig` and `legend.align.dpo.MarginDPOConfig` is TRL's `DPOConfig`, each with the few fields
below mixed in. Every option, TRL's and legend's, is then one dataclass field: transformers'
`HfArgumentParser` reads them all from a command line (`parse_config`), legend checks its fields once
in `__post_init__`, and the whole config is saved with the trained model (`legend_rm.json`,
`legend_dpo.json`). Each field's `metadata["help"]` is also the help of the matching CLI option.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..data import ColumnNames

TEMPLATES = ("auto", "chat", "plain")
OFFSET_TRANSFORM_NAMES = ("identity", "relu")  # the functions are in legend.align.dpo.OFFSET_TRANSFORMS


def _none(value: str | None) -> str | None:
    """'none' (any case) or '' on a command line means no column."""
    return None if value is None or value.strip().lower() in ("", "none") else value


@dataclass
class MarginFields:
    """The fields reward training and DPO share: what to train, which margin column, the offset scale, LoRA."""

    model: str = field(
        default="default",
        metadata={"help": "Model to train: Hugging Face id, local path, or 'default' (the embedded SmolLM2)."},
    )
    margin_column: str | None = field(
        default="margin",
        metadata={
            "help": "Column feeding the loss offset: margin (binned levels) | margin_raw | any numeric column | "
            "none (no offset)."
        },
    )
    alpha: float = field(default=1.0, metadata={"help": "Scale of the offset: alpha * margin (0 = no offset)."})
    prompt_column: str | None = field(default=None, metadata={"help": "Prompt column (auto-detected by default)."})
    chosen_column: str | None = field(default=None, metadata={"help": "Chosen column (auto-detected by default)."})
    rejected_column: str | None = field(default=None, metadata={"help": "Rejected column (auto-detected by default)."})
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha; default: 2 * lora_r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})

    @property
    def columns(self) -> ColumnNames:
        return ColumnNames(prompt=self.prompt_column, chosen=self.chosen_column, rejected=self.rejected_column)

    @property
    def offset_on(self) -> bool:
        return bool(self.alpha) and self.margin_column is not None

    def check_margin_fields(self) -> None:
        """Normalise and validate the shared fields (called by each config's `__post_init__`)."""
        self.margin_column = _none(self.margin_column)
        self.alpha = float(self.alpha)
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be a finite number, got {self.alpha}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, got {self.lora_r}")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class RewardFields(MarginFields):
    """Legend's reward-model fields: the margin offset of TRL's loss, the text template, partial training."""

    template: str = field(
        default="auto", metadata={"help": "auto (chat template when the tokenizer has one) | chat | plain."}
    )
    train_layers: int | None = field(
        default=None,
        metadata={
            "help": "Train only the last N decoder blocks + final norm + head (much cheaper backward on CPU); "
            "default all."
        },
    )

    def check_reward_fields(self) -> None:
        self.check_margin_fields()
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; choose from {', '.join(TEMPLATES)}")
        if self.train_layers is not None and self.train_layers < 0:
            raise ValueError(f"train_layers must be at least 0, got {self.train_layers}")
        if self.lora and self.train_layers is not None:
            raise ValueError("choose either LoRA or --train-layers, not both")


@dataclass
class DPOFields(MarginFields):
    """Legend's DPO fields: the ODPO offset alpha * f(margin), the held-out share, the LoRA target."""

    offset_transform: str = field(
        default="identity", metadata={"help": "f: identity | relu (negative margins give no offset)."}
    )
    eval_fraction: float = field(default=0.0, metadata={"help": "Share of pairs held out for evaluation."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target: str = field(default="all-linear", metadata={"help": "Modules LoRA adapts (peft target_modules)."})

    def check_dpo_fields(self) -> None:
        self.check_margin_fields()
        if self.offset_transform not in OFFSET_TRANSFORM_NAMES:
            raise ValueError(
                f"unknown offset transform {self.offset_transform!r}; choose from {', '.join(OFFSET_TRANSFORM_NAMES)}"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


C = TypeVar("C")


def parse_config(
    cls: type[C],
    extra_args: Sequence[str] = (),
    *,
    option_names: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    **options: Any,
) -> C:
    """A TRL config (with legend's fields) from keyword `options` plus command-line `extra_args`.

    Both go through transformers' `HfArgumentParser`, so `["--warmup_steps", "0.1"]` is typed exactly
    as on any HF training command line; options that are None keep the field's default. A field set
    both ways is refused, naming its own option (`option_names[field]`, else `--field-name`).
    `defaults` are the caller's defaults for other fields: `extra_args` may override them.
    """
    from transformers import HfArgumentParser

    extra = list(extra_args)
    named = {**{key: "--" + key.replace("_", "-") for key in options}, **(option_names or {})}
    given = [arg.split("=", 1)[0].lstrip("-").replace("-", "_") for arg in extra if arg.startswith("--")]
    clash = sorted({key for key in given if key in named})
    if clash:
        raise ValueError(
            "set " + ", ".join(f"{key} with {named[key]}" for key in clash) + ", not as an extra TRL argument"
        )
    argv: list[str] = []
    for key, value in {**(defaults or {}), **options}.items():
        if isinstance(value, (list, tuple)):  # list fields take one argument per item (nargs="+")
            argv += [f"--{key}", *(str(item) for item in value)]
        elif value is not None:
            argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    parser = HfArgumentParser(cls)  # type: ignore[arg-type]  # a dataclass type
    detail = ""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            (config,) = parser.parse_args_into_dataclasses(args=argv + extra, look_for_args_file=False)
    except SystemExit:  # argparse exits on a bad flag or value; make it a one-line error instead
        lines = captured.getvalue().strip().splitlines()
        detail = f" ({lines[-1].split('error: ', 1)[-1]})" if lines else ""
        config = None
    except ValueError as err:
        if "not used by the HfArgumentParser" not in str(err):
            raise  # the config's own validation: its message is the error
        config = None
    if config is None:
        raise ValueError(f"not a valid {cls.__name__} setting among: {' '.join(extra) or '(none)'}{detail}")
    return config


def pairs_to_args(pairs: Sequence[str]) -> list[str]:
    """Repeated `--arg key=value` (the CLI's form) as `--key value` arguments for `parse_config`."""
    out: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--arg {pair!r}: expected key=value (a TRL config / TrainingArguments field)")
        out += ["--" + key.strip().replace("-", "_"), value]
    return out
