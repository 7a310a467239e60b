"""Harmless alignment with Legend margins: best-of-n comparisons of reward models and margin-aware DPO.

Submodules import torch/transformers/TRL lazily from the CLI's point of view; import what you need:

    from legend.align.best_of_n import read_prompts, run_best_of_n, SamplingConfig, plot_report
    from legend.align.scoring import RewardModelScorer, DirectionScorer
    from legend.align.dpo import MarginDPOTrainer, train_dpo, dpo_config, preference_dataset
"""
