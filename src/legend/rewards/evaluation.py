"""Score preference pairs with a reward model and measure pairwise accuracy with bootstrap CIs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import ColumnNames, PairView
from ..metrics import DEFAULT_BOOTSTRAP, bootstrap_mean_ci
from .scorer import RewardScorer, load_reward_model
from .training import PreferenceSet, read_preferences


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
    scorer = dataclasses.replace(scorer, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    items = [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views]
    scores = scorer.score_items(items, progress=progress)
    n = len(views)
    return PairScores(
        chosen=scores.rewards[:n],
        rejected=scores.rewards[n:],
        n_truncated_texts=scores.n_truncated_texts,
        n_tokens=scores.n_tokens,
        seconds=scores.seconds,
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
        scorer = dataclasses.replace(
            scorer,
            max_length=settings.max_length or scorer.max_length,
            template=settings.template or scorer.template,
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
