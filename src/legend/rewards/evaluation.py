"""Score preference pairs with a reward model and measure pairwise accuracy with bootstrap CIs."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import ColumnNames, PairView
from ..encoding import EncodeConfig, plan_batches, tokenize_items
from ..metrics import DEFAULT_BOOTSTRAP, bootstrap_mean_ci
from ..models import load_pretrained, resolve_model_path
from .training import PreferenceSet, read_preferences, read_training_report


@dataclass(frozen=True)
class EvalSettings:
    """How to score pairs. `max_length`/`template` default to what the model was trained with."""

    max_length: int | None = None
    template: str | None = None
    batch_size: int = 16
    max_batch_tokens: int = 16384
    margin_column: str | None = "margin"  # breakdown by level when the column exists; None: no breakdown
    n_bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 0
    columns: ColumnNames = field(default_factory=ColumnNames)
    progress: bool = False


@dataclass
class RewardScorer:
    """A sequence-classification reward model with its tokenizer and the settings it was trained with."""

    model: Any
    tokenizer: Any
    max_length: int = 512
    template: str = "auto"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_reward_model(
    path: str | os.PathLike, *, dtype: str = "float32", device: str | None = None, trust_remote_code: bool = False
) -> RewardScorer:
    """Load a reward model folder (from `legend train-rm`) or any HF sequence-classification model."""
    location, _ = resolve_model_path(str(path))
    model, tokenizer, _ = load_pretrained(
        str(path), head="reward", num_labels=1, dtype=dtype, device=device, trust_remote_code=trust_remote_code
    )
    report = read_training_report(location) if Path(location).is_dir() else None
    settings = (report or {}).get("settings", {})
    return RewardScorer(model, tokenizer, int(settings.get("max_length", 512)), settings.get("template", "auto"))


def as_scorer(model: Any, tokenizer: Any = None, *, max_length: int = 512, template: str = "auto") -> RewardScorer:
    """Wrap an in-memory model (e.g. `TrainedRewardModel.model`) for scoring."""
    if isinstance(model, RewardScorer):
        return model
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to score with an in-memory model")
    model.config.pad_token_id = tokenizer.pad_token_id
    return RewardScorer(model.eval(), tokenizer, max_length, template)


@dataclass
class PairScores:
    chosen: np.ndarray
    rejected: np.ndarray
    n_truncated_texts: int
    n_tokens: int
    seconds: float

    @property
    def gap(self) -> np.ndarray:
        return self.chosen - self.rejected


def score_pairs(
    scorer: RewardScorer,
    views: Sequence[PairView],
    *,
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
    progress: bool = False,
) -> PairScores:
    """Rewards of every chosen and rejected response, in batches of similar length, under inference_mode."""
    start = time.perf_counter()
    config = EncodeConfig(max_length=scorer.max_length, template=scorer.template)
    items = [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views]
    tokens = tokenize_items(scorer.tokenizer, items, config)
    rewards = np.zeros(len(tokens), dtype=np.float64)
    pad = scorer.tokenizer.pad_token_id
    batches = plan_batches([len(t.ids) for t in tokens], batch_size, max_batch_tokens)
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
            logits = scorer.model(input_ids=ids.to(scorer.device), attention_mask=mask.to(scorer.device)).logits
            rewards[batch] = logits[:, 0].float().cpu().numpy()
    n = len(views)
    return PairScores(
        chosen=rewards[:n],
        rejected=rewards[n:],
        n_truncated_texts=sum(t.truncated for t in tokens),
        n_tokens=sum(len(t.ids) for t in tokens),
        seconds=time.perf_counter() - start,
    )


def pairwise_accuracy(
    chosen: np.ndarray,
    rejected: np.ndarray,
    *,
    levels: np.ndarray | None = None,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Share of pairs with r_chosen > r_rejected (ties count as wrong), 95% CI, and per margin level."""
    correct = (np.asarray(chosen) > np.asarray(rejected)).astype(np.float64)
    low, high = bootstrap_mean_ci(correct, n_bootstrap=n_bootstrap, seed=seed)
    report: dict[str, Any] = {
        "n": int(correct.size),
        "accuracy": float(correct.mean()) if correct.size else float("nan"),
        "ci95": [low, high],
        "ties": int(np.sum(np.asarray(chosen) == np.asarray(rejected))),
        "mean_gap": float(np.mean(np.asarray(chosen) - np.asarray(rejected))) if correct.size else float("nan"),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
    }
    if levels is not None:
        levels = np.asarray(levels, dtype=np.float64)
        report["by_level"] = {}
        for value in np.unique(levels):
            subset = correct[levels == value]
            sub_low, sub_high = bootstrap_mean_ci(subset, n_bootstrap=n_bootstrap, seed=seed)
            report["by_level"][f"{value:g}"] = {
                "n": int(subset.size),
                "accuracy": float(subset.mean()),
                "ci95": [sub_low, sub_high],
            }
    return report


def evaluate_reward_model(
    scorer: RewardScorer | str | os.PathLike,
    data: PreferenceSet | Any,
    settings: EvalSettings = EvalSettings(),
) -> dict[str, Any]:
    """Pairwise accuracy of a reward model on a preference set (any legend layout), as a JSON-able dict."""
    prefs = read_preferences(data, columns=settings.columns)  # read and checked before any weights are loaded
    column = settings.margin_column
    levels = prefs.column(column) if column and column in prefs.table.column_names else None
    if not isinstance(scorer, RewardScorer):
        scorer = load_reward_model(scorer)
    if settings.max_length is not None or settings.template is not None:
        scorer = RewardScorer(
            scorer.model,
            scorer.tokenizer,
            settings.max_length or scorer.max_length,
            settings.template or scorer.template,
        )
    scores = score_pairs(
        scorer,
        prefs.views,
        batch_size=settings.batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        progress=settings.progress,
    )
    report = pairwise_accuracy(
        scores.chosen, scores.rejected, levels=levels, n_bootstrap=settings.n_bootstrap, seed=settings.seed
    )
    report.update(
        source=prefs.source,
        level_column=column if levels is not None else None,
        truncated_texts=scores.n_truncated_texts,
        tokens=scores.n_tokens,
        seconds=round(scores.seconds, 3),
        max_length=scorer.max_length,
        template=scorer.template,
    )
    return report
