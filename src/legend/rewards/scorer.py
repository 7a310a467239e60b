"""The one reward-model scorer: a sequence-classification model fed (prompt, response) exactly as in training.

Used by `legend eval-rm`, the with/without-margins comparison, the ensemble baseline, and best-of-n
(`legend.align`). Texts go through `legend.encoding.tokenize_items` (chat template or plain, cut from
the left so the response is kept), batches of similar length are right-padded as TRL's reward
collator pads them, and the head's logit `label` is the reward.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..encoding import EncodeConfig, Item, Message, plan_batches, tokenize_items
from ..models import ensure_pad_token, load_pretrained, resolve_model_path
from .training import read_training_report

# A model without legend's training record is read up to TRL's RewardConfig default length; a model
# trained by `legend train-rm` is read as it was trained (its legend_rm.json's max_length and template).
DEFAULT_MAX_LENGTH = 1024
Prompt = tuple[Message, ...]


@dataclass
class RewardScorer:
    """A reward model (or a classifier's logit `label`) with the text settings it was trained with.

    `score(prompts, responses)` returns one reward per response (higher is better), the protocol
    best-of-n's selectors and judges share.
    """

    model: Any  # a transformers sequence-classification model
    tokenizer: Any
    max_length: int = DEFAULT_MAX_LENGTH
    template: str = "auto"
    name: str = "reward-model"
    label: int = 0
    batch_size: int = 16
    max_batch_tokens: int = 16384

    def __post_init__(self) -> None:
        # The head reads the last non-pad token, so pad must differ from the end-of-turn token (as in training).
        ensure_pad_token(self.tokenizer, reward_head=True)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @classmethod
    def load(
        cls,
        spec: str | os.PathLike[str],
        *,
        name: str | None = None,
        label: int | str = 0,
        dtype: str | torch.dtype = "float32",
        device: str | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        template: str | None = None,
        trust_remote_code: bool = False,
    ) -> RewardScorer:
        """Load a reward model or classifier from a folder (e.g. `legend train-rm`'s) or a Hub id.

        Args:
            spec: the model ("default" = the embedded SmolLM2 backbone with a fresh head).
            name: the name reports use (default: the model id).
            label: the logit column, by index or by a label name of the model's config.
            dtype: weights dtype.
            device: where to run (default: a GPU when visible).
            batch_size: responses per forward.
            max_length: tokens per text; default the training record's, else DEFAULT_MAX_LENGTH.
            template: auto | chat | plain; default the training record's, else auto.
            trust_remote_code: allow model code from the Hub.

        Returns:
            The scorer.
        """
        path, _ = resolve_model_path(str(spec))
        model, tokenizer, model_id = load_pretrained(
            str(spec), head="reward", dtype=dtype, device=device, trust_remote_code=trust_remote_code
        )
        trained = (read_training_report(path) or {}).get("settings", {}) if Path(path).is_dir() else {}
        return cls(
            model=model,
            tokenizer=tokenizer,
            max_length=int(max_length or trained.get("max_length") or DEFAULT_MAX_LENGTH),
            template=template or trained.get("template", "auto"),
            name=name or model_id,
            label=_label_index(model, label, str(spec)),
            batch_size=batch_size,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        """The reward of each (prompt, response)."""
        return self.score_items(list(zip(prompts, responses, strict=True))).rewards

    def score_items(self, items: Sequence[Item], *, progress: bool = False) -> ItemScores:
        """Rewards of (prompt, response) items in batches of similar length, with the token counts."""
        start = time.perf_counter()
        config = EncodeConfig(max_length=self.max_length, template=self.template)
        tokens = tokenize_items(self.tokenizer, items, config)
        rewards = np.zeros(len(tokens), dtype=np.float64)
        pad = self.tokenizer.pad_token_id
        batches: Any = plan_batches([len(t.ids) for t in tokens], self.batch_size, self.max_batch_tokens)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="scoring", unit="batch")
        with torch.inference_mode():
            for batch in batches:
                width = max(len(tokens[i].ids) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, index in enumerate(batch):  # right padding, as RewardTrainer's collator
                    seq = tokens[index].ids
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                rewards[batch] = logits[:, self.label].float().cpu().numpy()
        return ItemScores(
            rewards=rewards,
            n_truncated_texts=sum(t.truncated for t in tokens),
            n_tokens=sum(len(t.ids) for t in tokens),
            seconds=time.perf_counter() - start,
        )


@dataclass
class ItemScores:
    rewards: np.ndarray
    n_truncated_texts: int
    n_tokens: int
    seconds: float


def _label_index(model: Any, label: int | str, spec: str) -> int:
    """A logit column given as an index or as a label name from the model's config."""
    n = int(model.config.num_labels)
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        mapping = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
        if label not in mapping:
            raise ValueError(f"model {spec!r}: no label {label!r} (labels: {', '.join(mapping) or 'none named'})")
        return mapping[label]
    index = int(label)
    if not -n <= index < n:
        raise ValueError(f"model {spec!r}: label index {index} out of range for {n} outputs")
    return index % n


def load_reward_model(
    path: str | os.PathLike, *, dtype: str = "float32", device: str | None = None, trust_remote_code: bool = False
) -> RewardScorer:
    """Load a reward model folder (from `legend train-rm`) or any HF sequence-classification model."""
    return RewardScorer.load(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)


def as_scorer(
    model: Any, tokenizer: Any = None, *, max_length: int = DEFAULT_MAX_LENGTH, template: str = "auto"
) -> RewardScorer:
    """Wrap an in-memory model (e.g. `TrainedRewardModel.model`) for scoring."""
    if isinstance(model, RewardScorer):
        return model
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to score with an in-memory model")
    return RewardScorer(model.eval(), tokenizer, max_length, template)
