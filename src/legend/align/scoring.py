"""Scoring (prompt, response) pairs: reward models, a direction-based safety score, and win rates.

A scorer is anything with `.name` and `.score(prompts, responses) -> np.ndarray` (higher is better).
Two kinds are provided:

* `RewardScorer` (`legend.rewards.scorer`, also named `RewardModelScorer` here): any
  `AutoModelForSequenceClassification` (a reward model from `legend train-rm`, or a safety classifier,
  reading one logit column), fed the texts exactly as `legend train-rm` fed them.
* `DirectionScorer`: the projection of e(prompt ⊕ response) onto a Legend `Direction` (the cheap default
  judge): the same embedding `legend annotate` uses, so a higher score means "further on the harmless side".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..directions import Direction
from ..encoding import EncodeConfig, Message, encode
from ..metrics import scores
from ..models import LoadedModel
from ..rewards.scorer import RewardScorer

Prompt = tuple[Message, ...]


class Scorer(Protocol):
    name: str

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray: ...


# ---------------------------------------------------------------- reward models

# The reward-model scorer is legend.rewards.scorer.RewardScorer (the one home); its old name here:
RewardModelScorer = RewardScorer


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
