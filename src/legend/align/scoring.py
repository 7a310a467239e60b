"""Scoring (prompt, response) pairs: reward models, a direction-based safety score, and win rates.

A scorer is anything with `.name` and `.score(prompts, responses) -> np.ndarray` (higher is better).
Two kinds are provided:

* `RewardModelScorer`: any `AutoModelForSequenceClassification` (a reward model from `legend train-rm`,
  or a safety classifier, reading one logit column), fed the texts exactly as `legend train-rm` fed them,
  so a reward model is scored on inputs like the ones it was trained on.
* `DirectionScorer`: the projection of e(prompt ⊕ response) onto a Legend `Direction` (the cheap default
  judge): the same embedding `legend annotate` uses, so a higher score means "further on the harmless side".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..directions import Direction
from ..encoding import EncodeConfig, Message, encode, plan_batches, tokenize_items
from ..metrics import scores
from ..models import LoadedModel, ensure_pad_token, load_pretrained, resolve_model_path
from ..rewards.training import read_training_report

Prompt = tuple[Message, ...]


class Scorer(Protocol):
    name: str

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray: ...


# ---------------------------------------------------------------- reward models


@dataclass
class RewardModelScorer:
    """Scores with a sequence-classification model: logit `label` (0 for a one-output reward model).

    Texts are tokenised exactly as `legend train-rm` / `legend eval-rm` do (`legend.encoding.tokenize_items`:
    chat template or plain, truncated from the left so the response is kept); a model folder's
    `legend_rm.json` supplies the `max_length` and `template` it was trained with.
    """

    model: Any  # a transformers sequence-classification model
    tokenizer: Any
    name: str = "reward-model"
    label: int = 0
    batch_size: int = 16
    max_length: int = 1024
    template: str = "auto"

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        name: str | None = None,
        label: int | str = 0,
        dtype: str | torch.dtype = "float32",
        device: str | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        trust_remote_code: bool = False,
    ) -> RewardModelScorer:
        """Load a reward model or classifier from a path or Hub id ("default" = the embedded SmolLM2 backbone)."""
        path, _ = resolve_model_path(spec)
        model, tokenizer, model_id = load_pretrained(
            spec, head="reward", dtype=dtype, device=device, trust_remote_code=trust_remote_code
        )
        trained = (read_training_report(path) or {}).get("settings", {}) if Path(path).is_dir() else {}
        return cls(
            model=model,
            tokenizer=tokenizer,
            name=name or model_id,
            label=_label_index(model, label, spec),
            batch_size=batch_size,
            max_length=int(max_length or trained.get("max_length", 1024)),
            template=trained.get("template", "auto"),
        )

    def __post_init__(self) -> None:
        # The head reads the last non-pad token, so pad must differ from the end-of-turn token (as in training).
        ensure_pad_token(self.tokenizer, reward_head=True)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        config = EncodeConfig(max_length=self.max_length, template=self.template)
        tokens = tokenize_items(self.tokenizer, list(zip(prompts, responses, strict=True)), config)
        scores = np.empty(len(tokens), dtype=np.float64)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for batch in plan_batches([len(t.ids) for t in tokens], self.batch_size, 16384):
                width = max(len(tokens[i].ids) for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, index in enumerate(batch):  # right padding, as TRL's reward collator
                    input_ids[row, : len(tokens[index].ids)] = torch.tensor(tokens[index].ids)
                    mask[row, : len(tokens[index].ids)] = 1
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                scores[batch] = logits[:, self.label].float().cpu().numpy()
        return scores


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


# ---------------------------------------------------------------- direction score


@dataclass
class DirectionScorer:
    """Safety score = e(prompt ⊕ response) · direction, embedded exactly as `legend annotate` embeds."""

    lm: LoadedModel
    direction: Direction
    name: str = "direction"
    batch_size: int = 16

    def __post_init__(self) -> None:
        self.direction.check_compatible(self.lm)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        config: EncodeConfig = self.direction.encode_config(batch_size=self.batch_size)
        encoded = encode(self.lm, list(zip(prompts, responses, strict=True)), config)
        vectors = encoded.get(self.direction.layer, self.direction.pooling)
        return scores(vectors, self.direction.vector)
