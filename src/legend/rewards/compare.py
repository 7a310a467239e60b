"""The paper's reward-model experiment as one call: same backbone, seed and data, with and without margins.

Runs (all trained by `train_reward_model` with identical settings except the margin column):
  * `bradley-terry`: no margin;
  * `legend`: Legend's margin column (binned `margin` by default);
  * `ensemble`: RewardEnsemble@K margins, when asked for (computed here on the training split only,
    so no test label leaks into them) or when the data already carries the ensemble column.
All are evaluated on the same held-out pairs: accuracy, bootstrap 95% CI, and the paired difference
to Bradley–Terry (same resampled pairs for both models, so the CI of the difference is much tighter
than comparing two separate CIs). The cost ratio RewardEnsemble@K / Legend is per training pair on
the same hardware: Legend's time comes from the annotated file's `.legend.json` sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..annotation import find_sidecar
from ..directions import split_indices
from ..metrics import DEFAULT_BOOTSTRAP, paired_difference_ci
from .ensemble import EnsembleSettings, ensemble_margins
from .evaluation import pairwise_accuracy, score_pairs
from .scorer import as_scorer
from .training import LegendRewardConfig, PreferenceSet, read_preferences, train_reward_model


@dataclass(frozen=True)
class CompareSettings:
    test_fraction: float = 0.3  # used when no separate test set is given
    split_seed: int = 0
    legend_column: str = "margin"  # margin_raw to train on the raw projections
    ensemble_column: str = "margin_ensemble"
    ensemble_k: int | None = None  # run RewardEnsemble@K on the training split
    ensemble_scoring: str = "oof"
    levels: int = 4  # binning of the ensemble gaps (as Legend's default)
    level_column: str | None = "margin"  # accuracy broken down by this test column when present
    n_bootstrap: int = DEFAULT_BOOTSTRAP
    score_batch_size: int = 16


def legend_cost(data: Any, explicit: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Legend annotation seconds and rows from the annotation metadata (given, or found for the data file)."""
    try:
        path = (
            Path(explicit)
            if explicit is not None
            else (find_sidecar(data) if isinstance(data, (str, os.PathLike)) else None)
        )
    except ValueError:  # a folder with several annotated files: which one's time is meant is unknown
        path = None
    if path is None or not path.is_file():
        return None
    summary = json.loads(path.read_text()).get("summary", {})
    if "seconds" not in summary or not summary.get("rows"):
        return None
    return {
        "seconds": float(summary["seconds"]),
        "rows": int(summary["rows"]),
        "tokens": summary.get("tokens"),
        "model_id": summary.get("model_id"),
        "dtype": summary.get("dtype"),
        "sidecar": str(path),
    }


def compare_reward_models(
    data: datasets.Dataset | PreferenceSet | str | os.PathLike,
    reward: LegendRewardConfig | None = None,
    settings: CompareSettings = CompareSettings(),
    *,
    test: datasets.Dataset | PreferenceSet | str | os.PathLike | None = None,
    legend_sidecar: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train BT / Legend-margin / (ensemble-margin) reward models and evaluate them on one test set."""
    reward = reward if reward is not None else LegendRewardConfig()
    prefs = read_preferences(data, columns=reward.columns)
    if test is None:
        train_rows, test_rows = split_indices(len(prefs), settings.test_fraction, settings.split_seed)
        train_prefs, test_prefs = prefs.select(train_rows), prefs.select(test_rows)
    else:
        train_prefs, test_prefs = prefs, read_preferences(test, columns=reward.columns)
    train_prefs.column(settings.legend_column)  # fail early, naming the file, if the data is not annotated
    start = time.perf_counter()
    ensemble_report = None
    if settings.ensemble_k:
        ensemble = ensemble_margins(
            train_prefs,
            reward,
            EnsembleSettings(
                k=settings.ensemble_k,
                scoring=settings.ensemble_scoring,
                column=settings.ensemble_column,
                levels=settings.levels,
                seed=settings.split_seed,
                score_batch_size=settings.score_batch_size,
            ),
        )
        train_prefs = PreferenceSet(train_prefs.views, ensemble.dataset, train_prefs.source)
        ensemble_report = ensemble.report
    runs = [("bradley-terry", None), ("legend", settings.legend_column)]
    if settings.ensemble_column in train_prefs.table.column_names:
        runs.append(("ensemble", settings.ensemble_column))
    level_column = settings.level_column if settings.level_column in test_prefs.table.column_names else None
    levels = test_prefs.column(level_column) if level_column else None
    results: list[dict[str, Any]] = []
    correct: dict[str, np.ndarray] = {}
    for name, column in runs:
        trained = train_reward_model(train_prefs, dataclasses.replace(reward, margin_column=column))
        scorer = as_scorer(trained.model, trained.tokenizer, max_length=reward.max_tokens, template=reward.template)
        scores = score_pairs(scorer, test_prefs.views, batch_size=settings.score_batch_size)
        accuracy = pairwise_accuracy(
            scores.chosen, scores.rejected, levels=levels, n_bootstrap=settings.n_bootstrap, seed=settings.split_seed
        )
        correct[name] = (scores.chosen > scores.rejected).astype(np.float64)
        results.append(
            {
                "run": name,
                "margin_column": column,
                "alpha": reward.alpha if column else 0.0,
                "accuracy": accuracy["accuracy"],
                "ci95": accuracy["ci95"],
                "by_level": accuracy.get("by_level"),
                "train_seconds": trained.report["train_seconds"],
                "train_loss": trained.report["train_loss"],
                "n_truncated_pairs": trained.report["n_truncated_pairs"],
                "n_left_out": trained.report["n_left_out"],
            }
        )
        del trained, scorer
    for row in results[1:]:
        low, high = paired_difference_ci(
            correct[row["run"]], correct["bradley-terry"], n_bootstrap=settings.n_bootstrap, seed=settings.split_seed
        )
        row["delta_vs_bt"] = float(correct[row["run"]].mean() - correct["bradley-terry"].mean())
        row["delta_ci95"] = [low, high]
    return {
        "runs": results,
        "n_train": len(train_prefs),
        "n_test": len(test_prefs),
        "level_column": level_column,
        "cost": _cost(data, legend_sidecar, ensemble_report, len(train_prefs)),
        "ensemble": ensemble_report,
        "total_seconds": round(time.perf_counter() - start, 3),
        "reward_settings": reward.to_report(),
        "compare_settings": dataclasses.asdict(settings),
    }


def _cost(data: Any, legend_sidecar: Any, ensemble_report: dict[str, Any] | None, n_train: int) -> dict[str, Any]:
    """Seconds to get margins for the training pairs: Legend (scaled per pair) vs RewardEnsemble@K."""
    legend = legend_cost(data, legend_sidecar)
    cost: dict[str, Any] = {"legend": None, "ensemble": None, "ratio_ensemble_over_legend": None}
    if legend is not None:
        per_pair = legend["seconds"] / legend["rows"]
        cost["legend"] = {**legend, "seconds_per_pair": per_pair, "seconds_for_train_pairs": per_pair * n_train}
    if ensemble_report is not None:
        cost["ensemble"] = {
            "seconds": ensemble_report["seconds"],
            "k": ensemble_report["k"],
            "forward_backward_tokens": ensemble_report["forward_backward_tokens"],
            "forward_only_tokens": ensemble_report["forward_only_tokens"],
            "approx_flops": ensemble_report["approx_flops"],
        }
    if cost["legend"] and cost["ensemble"] and cost["legend"]["seconds_for_train_pairs"] > 0:
        cost["ratio_ensemble_over_legend"] = cost["ensemble"]["seconds"] / cost["legend"]["seconds_for_train_pairs"]
    return cost
