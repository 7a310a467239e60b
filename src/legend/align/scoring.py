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
from typing import Protocol

import numpy as np
import torch

from ..directions import Direction
from ..encoding import EncodeConfig, Message, encode, plan_batches, tokenize_items
from ..models import LoadedModel, ModelError, resolve_model_path

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

    model: torch.nn.Module
    tokenizer: object
    name: str = "reward-model"
    label: int = 0
    batch_size: int = 16
    max_length: int = 1024
    template: str = "auto"

    @classmethod
    def load(cls, spec: str, *, name: str | None = None, label: int | str = 0, dtype: str | torch.dtype = "float32",
             device: str | None = None, batch_size: int = 16, max_length: int | None = None,
             trust_remote_code: bool = False) -> "RewardModelScorer":
        """Load a reward model or classifier from a path or Hub id ("default" = the embedded SmolLM2 backbone)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import DTYPES
        from ..rewards.training import read_training_report

        path, model_id = resolve_model_path(spec)
        torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype,
                                                                       trust_remote_code=trust_remote_code)
        except OSError as err:
            raise ModelError(f"reward model {spec!r}: could not be loaded ({str(err).splitlines()[0]})") from err
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        trained = (read_training_report(path) or {}).get("settings", {}) if Path(path).is_dir() else {}
        return cls(model=model, tokenizer=tokenizer, name=name or model_id, label=_label_index(model, label, spec),
                   batch_size=batch_size, max_length=int(max_length or trained.get("max_length", 1024)),
                   template=trained.get("template", "auto"))

    def __post_init__(self) -> None:
        from ..rewards.training import prepare_tokenizer

        # The head reads the last non-pad token, so pad must differ from the end-of-turn token (as in training).
        prepare_tokenizer(self.tokenizer)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        config = EncodeConfig(max_length=self.max_length, template=self.template)  # type: ignore[arg-type]
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
                    input_ids[row, :len(tokens[index].ids)] = torch.tensor(tokens[index].ids)
                    mask[row, :len(tokens[index].ids)] = 1
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                scores[batch] = logits[:, self.label].float().cpu().numpy()
        return scores


def _label_index(model: torch.nn.Module, label: int | str, spec: str) -> int:
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
        return (vectors.double() @ self.direction.vector.double()).numpy()


# ---------------------------------------------------------------- win rates

def win_rate(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Share of items where a beats b; a tie counts one half."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"win_rate needs two score lists of the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("win_rate needs at least one item")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def bootstrap_ci(a: np.ndarray, b: np.ndarray, *, samples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `win_rate(a, b)`, resampling items (prompts)."""
    outcome = (np.asarray(a) > np.asarray(b)) + 0.5 * (np.asarray(a) == np.asarray(b))
    rng = np.random.default_rng(seed)
    draws = outcome[rng.integers(0, len(outcome), size=(samples, len(outcome)))].mean(1)
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)

