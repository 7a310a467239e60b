"""The RewardEnsemble@K baseline: margins from K reward models trained on the data itself.

K-fold: the pairs are split into K folds; model k is trained (plain Bradley–Terry, same trainer and
settings as `train_reward_model`) on the other K−1 folds. With scoring "oof" (default) each pair's
margin is the reward gap r_c − r_r given by the one model that never saw it; with "mean" every model
scores every pair and the margin is the mean gap (the ensemble as usually described, but K−1 of the
K models saw each pair). The gap is written to `<column>_raw` and binned like Legend's margins (raw ≤ 0 lowest level,
positive gaps split by quantiles) into `<column>`, so both margins feed TRL on the same scale.

Its cost (wall-clock, forward+backward tokens, forward-only tokens) is recorded so that
`compare-rm` can set it against Legend's annotation time on the same data and hardware.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .._version import __version__
from ..data import DataError, load_table
from ..io import write_json, write_table
from ..margins import Binning, describe
from .evaluation import score_pairs
from .scorer import as_scorer
from .training import LegendRewardConfig, PreferenceSet, read_preferences, train_reward_model

ENSEMBLE_SIDECAR_SUFFIX = ".ensemble.json"
SCORINGS = ("oof", "mean")


@dataclass(frozen=True)
class EnsembleSettings:
    """K, how pairs are scored, and how the gap is binned and named."""

    k: int = 4
    scoring: str = "oof"  # oof | mean (see module doc)
    column: str = "margin_ensemble"  # binned levels; the raw gap goes to <column>_raw
    levels: int = 4
    level_values: tuple[float, ...] | None = None
    seed: int = 0  # fold assignment
    score_batch_size: int = 16

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError("RewardEnsemble needs k >= 2 folds")
        if self.scoring not in SCORINGS:
            raise ValueError(f"unknown scoring {self.scoring!r}; choose from {', '.join(SCORINGS)}")


@dataclass
class EnsembleResult:
    dataset: datasets.Dataset
    raw: np.ndarray
    binning: Binning
    report: dict[str, Any]


def kfold(n: int, k: int, seed: int) -> list[np.ndarray]:
    """K seeded folds of 0..n-1 (sizes differ by at most one)."""
    if n < k:
        raise ValueError(f"{n} pairs cannot be split into {k} folds")
    return [np.sort(f) for f in np.array_split(np.random.default_rng(seed).permutation(n), k)]


def ensemble_margins(
    data: datasets.Dataset | PreferenceSet | str | os.PathLike,
    reward: LegendRewardConfig | None = None,
    settings: EnsembleSettings = EnsembleSettings(),
) -> EnsembleResult:
    """Train K reward models on K-fold splits and turn their reward gaps into a margin column."""
    reward = reward if reward is not None else LegendRewardConfig()
    prefs = read_preferences(data, columns=reward.columns)
    plain = dataclasses.replace(reward, margin_column=None)
    folds = kfold(len(prefs), settings.k, settings.seed)
    start = time.perf_counter()
    gaps = np.zeros((settings.k, len(prefs)), dtype=np.float64) if settings.scoring == "mean" else None
    raw = np.zeros(len(prefs), dtype=np.float64)
    members: list[dict[str, Any]] = []
    for index, held_out in enumerate(folds):
        train_rows = np.setdiff1d(np.arange(len(prefs)), held_out)
        trained = train_reward_model(prefs.select(train_rows), plain)
        scorer = as_scorer(trained.model, trained.tokenizer, max_length=reward.max_tokens, template=reward.template)
        rows = np.arange(len(prefs)) if settings.scoring == "mean" else held_out
        scores = score_pairs(scorer, [prefs.views[i] for i in rows], batch_size=settings.score_batch_size)
        if gaps is not None:
            gaps[index] = scores.gap
        else:
            raw[held_out] = scores.gap
        members.append(
            {
                "fold": index,
                "train_pairs": len(train_rows),
                "scored_pairs": len(rows),
                "train_seconds": trained.report["train_seconds"],
                "score_seconds": round(scores.seconds, 3),
                "train_tokens": trained.report["train_tokens"],
                "score_tokens": scores.n_tokens,
                "train_loss": trained.report["train_loss"],
                "parameters": int(trained.model.num_parameters()),
            }
        )
        del trained, scorer
    if gaps is not None:
        raw = gaps.mean(axis=0)
    seconds = time.perf_counter() - start
    binning = Binning.fit(raw, settings.levels, settings.level_values)
    binned = binning.apply(raw)
    raw_column = f"{settings.column}_raw"
    table = prefs.table.remove_columns([c for c in (raw_column, settings.column) if c in prefs.table.column_names])
    table = table.add_column(raw_column, raw.tolist()).add_column(settings.column, binned.tolist())
    fb_tokens = sum(m["train_tokens"] for m in members)
    fwd_tokens = sum(m["score_tokens"] for m in members)
    params = members[0]["parameters"]
    report = {
        "method": f"RewardEnsemble@{settings.k}",
        "k": settings.k,
        "scoring": settings.scoring,
        "rows": len(prefs),
        "source": prefs.source,
        "seconds": round(seconds, 3),
        "pairs_per_second": round(len(prefs) / seconds, 3) if seconds > 0 else None,
        "train_seconds": round(sum(m["train_seconds"] for m in members), 3),
        "score_seconds": round(sum(m["score_seconds"] for m in members), 3),
        "forward_backward_tokens": fb_tokens,
        "forward_only_tokens": fwd_tokens,
        # The usual estimate: 6·N FLOPs per trained token (forward + backward), 2·N per scored token.
        "approx_flops": float(6 * params * fb_tokens + 2 * params * fwd_tokens),
        "parameters": params,
        "columns": {"raw": raw_column, "binned": settings.column},
        "margin_raw": describe(raw),
        "margin": describe(binned, binned),
        "binning": binning.to_dict(),
        "members": members,
        "reward_settings": plain.to_report(),
    }
    return EnsembleResult(dataset=table, raw=raw, binning=binning, report=report)


def ensemble_sidecar_path(out: str | os.PathLike) -> Path:
    return Path(str(out) + ENSEMBLE_SIDECAR_SUFFIX)


def ensemble_file(
    data: str | os.PathLike,
    out: str | os.PathLike,
    reward: LegendRewardConfig | None = None,
    settings: EnsembleSettings = EnsembleSettings(),
    *,
    split: str = "train",
    limit: int | None = None,
) -> EnsembleResult:
    """Add RewardEnsemble@K margins to a preference file; write it and `<out>.ensemble.json` atomically."""
    reward = reward if reward is not None else LegendRewardConfig()
    table = load_table(data, split=split)
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    if len(table) == 0:
        raise DataError("no rows", source=str(data))
    result = ensemble_margins(read_preferences(table, columns=reward.columns, source=str(data)), reward, settings)
    write_table(result.dataset, out)
    write_json(
        {"legend_version": __version__, "input": str(data), "output": str(out), "summary": result.report},
        ensemble_sidecar_path(out),
    )
    return result
