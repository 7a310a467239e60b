"""Choosing by agreement with a small labelled preference set (`--select-on`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data import PairView
from ..directions import (
    ESTIMATORS,
    ContrastEmbeddings,
    split_indices,
)
from ..encoding import EncodeConfig, Encoder, encode
from ..metrics import project, symmetric_auc
from ..models import LoadedModel
from .sweeps import PREFERENCE_RULE, Candidate, SweepResult, _finite, _none_if_nan, _rank_key


def preference_embeddings(
    lm: Encoder | LoadedModel,
    views: Sequence[PairView],
    layers: Sequence[int],
    poolings: Sequence[str],
    *,
    template: str,
    max_length: int,
    encoding: EncodeConfig | None = None,
) -> tuple[dict[tuple[int, str], torch.Tensor], dict[tuple[int, str], torch.Tensor]]:
    """Chosen and rejected embeddings of preference pairs for every layer/pooling, in ONE pass."""
    config = dataclasses.replace(
        encoding or EncodeConfig(),
        layers=tuple(layers),
        poolings=tuple(poolings),
        template=template,
        max_length=max_length,
        description="select-on",
    )
    items = [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views]
    encoded = encode(lm, items, config)
    n = len(views)
    return ({k: v[:n] for k, v in encoded.vectors.items()}, {k: v[n:] for k, v in encoded.vectors.items()})


def preference_agreement(margins: np.ndarray) -> tuple[float, float]:
    """(share of positive margins, symmetric AUC of the margins) on labelled pairs (chosen = safer)."""
    margins = np.asarray(margins, dtype=np.float64)
    return float((margins > 0).mean()), symmetric_auc(margins)


def select_on_preferences(
    result: SweepResult,
    embeddings: ContrastEmbeddings,
    chosen: dict[tuple[int, str], torch.Tensor],
    rejected: dict[tuple[int, str], torch.Tensor],
    *,
    dev_fraction: float = 0.5,
    seed: int = 0,
    fitted: dict[Candidate, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Pick the swept candidate whose margins agree best with preference labels on a dev split.

    Each candidate direction is fitted on ALL contrast pairs; margins (chosen − rejected)·v of the
    dev pairs are scored by share positive then symmetric AUC (PREFERENCE_RULE), and the winner
    alone is reported on the test pairs. Fills `dev_share_positive`/`dev_auc` of every row and
    sets `result.best` to the winner. Returns the selection record (split sizes, dev and test metrics).
    `fitted` (candidate -> vector fitted on all contrast pairs) is filled as a cache and reused if given.
    """
    n = len(next(iter(chosen.values())))
    if n < 2:
        raise ValueError(f"need at least 2 preference pairs to select on, got {n}")
    dev, test = split_indices(n, 1.0 - dev_fraction, seed)
    vectors = fitted if fitted is not None else {}
    for row in result.rows:
        if row.error is not None:
            continue
        key = (row.layer, row.pooling)
        try:
            vector = vectors.get(row.candidate)
            if vector is None:
                vector = vectors[row.candidate] = ESTIMATORS[row.estimator](
                    embeddings.harmless[key], embeddings.harmful[key]
                )
        except ValueError as err:
            row.error = str(err)
            continue
        margins = project(chosen[key][dev], rejected[key][dev], vector)
        row.dev_share_positive, row.dev_auc = preference_agreement(margins)
    scored = [row for row in result.rows if row.dev_share_positive is not None]
    if not scored:
        raise ValueError("no candidate could be fitted on the contrast pairs")
    winner = max(scored, key=lambda row: (_finite(row.dev_share_positive), _finite(row.dev_auc), _rank_key(row)))
    result.best = winner
    key = (winner.layer, winner.pooling)
    test_share, test_auc = (
        preference_agreement(project(chosen[key][test], rejected[key][test], vectors[winner.candidate]))
        if len(test)
        else (math.nan, math.nan)
    )
    return {
        "rule": PREFERENCE_RULE,
        "dev_fraction": dev_fraction,
        "seed": seed,
        "n_dev": len(dev),
        "n_test": len(test),
        "dev_share_positive": winner.dev_share_positive,
        "dev_auc": winner.dev_auc,
        "test_share_positive": _none_if_nan(test_share),
        "test_auc": _none_if_nan(test_auc),
        "test_rows": (test + 1).tolist(),
    }
