"""Reward models that use Legend margins: training (TRL RewardTrainer), evaluation, the
RewardEnsemble@K baseline, and the paper's with/without-margins comparison. See docs/rewards.md."""

from .compare import CompareSettings, compare_reward_models, legend_cost
from .ensemble import EnsembleResult, EnsembleSettings, ensemble_file, ensemble_margins, kfold
from .evaluation import (
    EvalSettings,
    PairScores,
    RewardScorer,
    as_scorer,
    evaluate_reward_model,
    load_reward_model,
    pairwise_accuracy,
    score_pairs,
)
from .training import (
    PreferenceSet,
    RewardSettings,
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

__all__ = [
    "CompareSettings",
    "EnsembleResult",
    "EnsembleSettings",
    "EvalSettings",
    "PairScores",
    "PreferenceSet",
    "RewardScorer",
    "RewardSettings",
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
