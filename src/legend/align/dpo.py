"""Margin-aware DPO on TRL's DPOTrainer: each pair's offset comes from its Legend margin (the ODPO form).

    loss = −log σ( β·(Δ_policy − Δ_ref) − α·f(margin) ),   Δ = log π(chosen|x) − log π(rejected|x)

i.e. the policy's implicit reward gap β·(Δ_policy − Δ_ref) must exceed α·f(margin) before the loss
flattens (ODPO, Amini et al. 2024). f is the identity by default, applied to the binned `margin` column
(levels 0, 1, 2, ... from `legend annotate`): pairs the direction finds clearly safer on the chosen side
must be separated more; level-0 pairs (raw margin ≤ 0) get no offset, which is plain DPO for them. With
`margin_raw`, f = `relu` keeps negative raw margins from loosening the constraint. α = 0 (or no margin
column) is plain DPO through the very same code path.

How it sits on TRL (minimal): TRL's collator drops unknown columns, so `MarginCollator` adds a `margin`
tensor to each batch and the trainer declares `margin` a signature column. `MarginDPOTrainer._compute_loss`
pops it and adds α·f(m)/β to the reference log-probability of the chosen answer, which is algebraically the
offset above: β·((c − (ref_c + α f/β)) − (r − ref_r)) = β·(Δ_policy − Δ_ref) − α f. TRL then computes its own
sigmoid loss. TRL's logged `rewards/chosen` and `rewards/margins` are therefore net of the offset
(`rewards/accuracies` = share of pairs whose gap exceeds their offset); `offset` is logged too.
"""

from __future__ import annotations

import copy
import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from ..data import ColumnNames, read_margin_column, read_pairs
from ..io import write_json
from ..models import ensure_pad_token, load_pretrained
from ..rewards.fields import DPOFields, parse_config

MARGIN_KEY = "margin"  # the column/batch key that carries each pair's margin through TRL

OFFSET_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda m: m,
    "relu": torch.relu,  # negative (raw) margins give no offset instead of a negative one
}


@dataclass
class MarginDPOConfig(DPOConfig, DPOFields):
    """TRL's DPOConfig plus legend's fields (`DPOFields`): the one settings object of margin-aware DPO.

    Every DPOConfig / TrainingArguments field keeps TRL's name and default (except `bf16`: off without
    CUDA, where TRL's "on" refuses to start); legend adds the model, the margin column, α, f, the
    held-out share and LoRA. Checked once here (the offset needs TRL's sigmoid
    loss with the standard reverse-KL DPO); saved whole in `legend_dpo.json`.
    """

    bf16: bool = field(
        default_factory=torch.cuda.is_available,
        metadata={"help": "bf16 mixed precision; default: with CUDA (TRL's default, on), off on the CPU."},
    )

    def __post_init__(self) -> None:
        self.check_dpo_fields()
        super().__post_init__()
        if self.offset_on and (list(self.loss_type) != ["sigmoid"] or self.f_divergence_type != "reverse_kl"):
            raise ValueError(
                "the margin offset needs loss_type ['sigmoid'] and f_divergence_type 'reverse_kl', got "
                f"{self.loss_type} and {self.f_divergence_type!r}; use --alpha 0 for other losses"
            )


# ---------------------------------------------------------------- data


def preference_dataset(
    data: datasets.Dataset | str | os.PathLike,
    *,
    margin_column: str | None = "margin",
    columns: ColumnNames = ColumnNames(),
    limit: int | None = None,
    source: str | None = None,
) -> datasets.Dataset:
    """TRL conversational preference rows {prompt, chosen, rejected (message lists), margin} from any legend layout.

    Raises DataError naming the row when the margin column is missing or holds a non-finite / non-numeric value.
    """
    pairs = read_pairs(data, columns, limit=limit, source_name=source)
    views = pairs.views
    rows: dict[str, list[Any]] = {
        "prompt": [[dict(m) for m in v.prompt] for v in views],
        "chosen": [[{"role": "assistant", "content": v.chosen}] for v in views],
        "rejected": [[{"role": "assistant", "content": v.rejected}] for v in views],
    }
    if margin_column is not None:
        margins = read_margin_column(pairs.table, margin_column, source=pairs.source, instead="turn the offset off")
        rows[MARGIN_KEY] = margins.tolist()
    return datasets.Dataset.from_dict(rows)


@dataclass
class MarginCollator(DataCollatorForPreference):
    """TRL's preference collator, plus the `margin` of each pair as a float tensor [batch]."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = super().torch_call(examples)
        if MARGIN_KEY in examples[0]:
            output[MARGIN_KEY] = torch.tensor([float(e[MARGIN_KEY]) for e in examples], dtype=torch.float32)
        return output


# ---------------------------------------------------------------- trainer


class MarginDPOTrainer(DPOTrainer):
    """DPOTrainer whose sigmoid loss subtracts a per-pair offset α·f(margin) (see the module docstring).

    α and f come from its `MarginDPOConfig` (`args`); α = 0 or no margin column gives TRL's plain DPO
    loss exactly.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = inspect.signature(DPOTrainer.__init__).bind(self, *args, **kwargs).arguments
        config, tokenizer = given.get("args"), given.get("processing_class")
        if not isinstance(config, MarginDPOConfig):
            raise TypeError("MarginDPOTrainer needs args=MarginDPOConfig (see legend.align.dpo.dpo_config)")
        self.offset_alpha = config.alpha if config.offset_on else 0.0
        self.offset_transform = config.offset_transform
        if "data_collator" not in given and tokenizer is not None:
            kwargs["data_collator"] = _margin_collator(tokenizer, config)
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        columns: list[str] = list(self._signature_columns or [])
        if MARGIN_KEY not in columns:
            self._signature_columns = [*columns, MARGIN_KEY]  # type: ignore[assignment]  # TRL types it None

    def offsets(self, margin: torch.Tensor) -> torch.Tensor:
        """α·f(margin) per pair."""
        return self.offset_alpha * OFFSET_TRANSFORMS[self.offset_transform](margin.float())

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        inputs = dict(inputs)
        margin = inputs.pop(MARGIN_KEY, None)
        if not self.offset_alpha:
            return super()._compute_loss(model, inputs, return_outputs)
        if margin is None:
            raise ValueError(f"the batch has no {MARGIN_KEY!r}: the margin offset needs a margin per pair")
        if "ref_chosen_logps" not in inputs:
            # TRL's own reference pass (frozen ref model, or the base model under a LoRA adapter).
            reference = self.ref_model if self.ref_model is not None else self.model
            inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = self.compute_ref_log_probs(reference, inputs)
        offset = self.offsets(margin).to(inputs["ref_chosen_logps"].device)
        inputs["ref_chosen_logps"] = (
            inputs["ref_chosen_logps"] + offset.to(inputs["ref_chosen_logps"].dtype) / self.beta
        )
        mode = "train" if model.training else "eval"
        self._metrics[mode]["offset"].append(self.accelerator.gather(offset).mean().item())
        previous, self.precompute_ref_logps = self.precompute_ref_logps, True  # read the ref log-probs from `inputs`
        try:
            return super()._compute_loss(model, inputs, return_outputs)
        finally:
            self.precompute_ref_logps = previous


def _margin_collator(tokenizer: Any, config: DPOConfig) -> MarginCollator:
    # The same choices TRL makes for its default collator.
    ensure_pad_token(tokenizer)
    return MarginCollator(
        pad_token_id=tokenizer.pad_token_id,
        max_length=config.max_length,
        truncation_mode=config.truncation_mode,
        pad_to_multiple_of=int(config.pad_to_multiple_of) if config.pad_to_multiple_of is not None else None,
    )


# ---------------------------------------------------------------- the job


def load_policy(spec: str | None, dtype: str = "float32", trust_remote_code: bool = False) -> tuple[Any, Any, str]:
    """(model, tokenizer, model id) of a causal LM to train; "default" = the embedded SmolLM2."""
    model, tokenizer, model_id = load_pretrained(
        spec, head="causal", dtype=dtype, trust_remote_code=trust_remote_code, place=False
    )
    return model, tokenizer, model_id


def train_dpo(
    data: datasets.Dataset | str | os.PathLike,
    config: MarginDPOConfig,
    *,
    limit: int | None = None,
    policy: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Train `config.model` with (margin-aware) DPO and save it to `config.output_dir`; return a summary.

    The data (and its margin column) are read and checked before the model is loaded. The reference is
    a frozen copy of the starting policy (with LoRA: the base model under the adapter; with
    `precompute_ref_log_probs`: its log-probs computed once before training). `policy`/`tokenizer`
    take an in-memory model instead of loading `config.model`; `limit` keeps the first rows. The
    summary is also written next to the model as `legend_dpo.json`.
    """
    margin_column = config.margin_column if config.offset_on else None
    dataset = preference_dataset(data, margin_column=margin_column, columns=config.columns, limit=limit)
    train, evaluation = _split(dataset, config.eval_fraction, config.seed)
    if policy is None:
        policy, tokenizer, model_id = load_policy(config.model, trust_remote_code=config.trust_remote_code)
    else:
        model_id = str(getattr(policy.config, "_name_or_path", None) or config.model)
    peft_config = None
    ref_model = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha or 2 * config.lora_r,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target,
            task_type="CAUSAL_LM",
        )
    elif not config.precompute_ref_log_probs:
        ref_model = copy.deepcopy(policy).eval().requires_grad_(False)
    trainer = MarginDPOTrainer(
        model=policy,
        ref_model=ref_model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(config.output_dir)
    offsets = trainer.offsets(torch.tensor(train[MARGIN_KEY])).numpy() if margin_column else np.zeros(len(train))
    summary = {
        "model_id": model_id,
        "output_dir": str(config.output_dir),
        "pairs_train": len(train),
        "pairs_eval": len(evaluation) if evaluation is not None else 0,
        "offset": {
            "on": config.offset_on,
            "alpha": config.alpha,
            "column": margin_column,
            "transform": config.offset_transform,
            "mean": float(offsets.mean()) if len(offsets) else 0.0,
            "max": float(offsets.max()) if len(offsets) else 0.0,
            "rule": "loss = -log sigmoid(beta*(dpolicy - dref) - alpha*f(margin))",
        },
        "settings": config.to_dict(),
        "beta": config.beta,
        "learning_rate": config.learning_rate,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "train_seconds": round(seconds, 3),
        "log_history": trainer.state.log_history,
    }
    write_json(summary, Path(str(config.output_dir)) / "legend_dpo.json")
    return summary


def _split(dataset: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    if not fraction:
        return dataset, None
    if not 0 < fraction < 1 or len(dataset) < 2:
        raise ValueError(f"eval fraction must be in (0, 1) with at least 2 pairs, got {fraction} for {len(dataset)}")
    parts = dataset.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def dpo_config(
    output_dir: str | os.PathLike | None = None,
    extra_args: Sequence[str] = (),
    *,
    option_names: Mapping[str, str] | None = None,
    **options: Any,
) -> MarginDPOConfig:
    """A MarginDPOConfig from keyword options plus TRL/transformers command-line arguments (`--warmup_steps 0.1`).

    `extra_args` are parsed by transformers' HfArgumentParser, so every DPOConfig field passes through,
    typed as on any HF training command line; a field given both ways is refused (as in `reward_config`).
    """
    if output_dir is not None:
        options["output_dir"] = str(output_dir)
    return parse_config(MarginDPOConfig, extra_args, option_names=option_names, **options)
