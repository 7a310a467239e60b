"""Reward models that use Legend margins: training (TRL RewardTrainer), evaluation, the
RewardEnsemble@K baseline, and the paper's with/without-margins comparison. See docs/rewards.md.

The names below are imported on first use (PEP 562), so that `legend.rewards.fields` (the light
field definitions the CLI reads its help from) can be imported without loading TRL and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compare import CompareSettings, compare_reward_models, legend_cost
    from .ensemble import EnsembleResult, EnsembleSettings, ensemble_file, ensemble_margins, kfold
    from .evaluation import EvalSettings, PairScores, evaluate_reward_model, pairwise_accuracy, score_pairs
    from .scorer import RewardScorer, as_scorer, load_reward_model
    from .training import (
        LegendRewardConfig,
        PreferenceSet,
        TokenizedPairs,
        TrainedRewardModel,
        build_trainer,
        parse_extra_args,
        read_preferences,
        reward_config,
        save_reward_model,
        tokenize_pairs,
        train_reward_model,
    )

_HOMES = {
    "compare": ("CompareSettings", "compare_reward_models", "legend_cost"),
    "ensemble": ("EnsembleResult", "EnsembleSettings", "ensemble_file", "ensemble_margins", "kfold"),
    "evaluation": ("EvalSettings", "PairScores", "evaluate_reward_model", "pairwise_accuracy", "score_pairs"),
    "scorer": ("RewardScorer", "as_scorer", "load_reward_model"),
    "training": (
        "LegendRewardConfig",
        "PreferenceSet",
        "TokenizedPairs",
        "TrainedRewardModel",
        "build_trainer",
        "parse_extra_args",
        "read_preferences",
        "reward_config",
        "save_reward_model",
        "tokenize_pairs",
        "train_reward_model",
    ),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "CompareSettings",
    "EnsembleResult",
    "EnsembleSettings",
    "EvalSettings",
    "LegendRewardConfig",
    "PairScores",
    "PreferenceSet",
    "RewardScorer",
    "TokenizedPairs",
    "TrainedRewardModel",
    "as_scorer",
    "build_trainer",
    "compare_reward_models",
    "ensemble_file",
    "ensemble_margins",
    "evaluate_reward_model",
    "kfold",
    "legend_cost",
    "load_reward_model",
    "pairwise_accuracy",
    "parse_extra_args",
    "read_preferences",
    "reward_config",
    "save_reward_model",
    "score_pairs",
    "tokenize_pairs",
    "train_reward_model",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
