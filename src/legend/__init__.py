"""legend: annotate preference datasets with safety margins by representation engineering.

Implements Legend (Feng et al., AAAI 2025, arXiv 2406.08124): build a concept direction from
contrast pairs, project each preference pair onto it, bin the projections into margins that
TRL's RewardTrainer reads from the `margin` column.
"""

__version__ = "0.1.0"
