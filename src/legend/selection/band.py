"""The previous band rule (one 80/20 split, band of layers): no longer used to choose, kept for the benchmarks'
before/after comparisons (`legend.selection.stable` is the rule; docs/selection.md says why)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..encoding import POOLINGS
from .sweeps import Candidate, SweepRow, _finite

# ---------------------------------------------------------------- the band rule

BAND_WIDTH = 2  # layers on each side: the band L-2..L+2
# Band centres come from the upper part of the network: early layers mostly encode the tokens
# themselves (a refusal's wording is trivially separable there) rather than what the answer does;
# representation-engineering work finds concept directions in the middle-to-late layers.
BAND_MIN_DEPTH = 0.5
BAND_RULE = (
    "among layers L >= 0.5 x depth with the full band L-2..L+2 swept: mean held-out effect size over the band "
    "(same pooling and estimator), then the layer's own effect size, then last before mean, then the deeper layer; "
    "mean_difference unless another estimator's band score is higher by more than 2 standard errors"
)


def band_scores(rows: Sequence[SweepRow], width: int = BAND_WIDTH) -> dict[Candidate, float]:
    """For each candidate, the mean held-out effect size of the same pooling/estimator over layers L-w..L+w.

    Only swept layers count; candidates that could not be fitted count as effect size 0 in their
    neighbours' bands (they separate nothing). A layer whose neighbours also separate well beats an
    isolated spike, which is more often noise of a small validation split.
    """
    table = {
        (r.layer, r.pooling, r.estimator): (0.0 if r.error or not math.isfinite(r.effect_size) else r.effect_size)
        for r in rows
    }
    out = {}
    for r in rows:
        if r.error is not None:
            continue
        band = [
            v
            for (layer, p, e), v in table.items()
            if p == r.pooling and e == r.estimator and abs(layer - r.layer) <= width
        ]
        out[r.candidate] = float(np.mean(band))
    return out


def band_choice(
    rows: Sequence[SweepRow],
    n_validation: int,
    width: int = BAND_WIDTH,
    *,
    num_layers: int | None = None,
    min_depth: float = BAND_MIN_DEPTH,
) -> SweepRow:
    """The row chosen by BAND_RULE (see docs/selection.md).

    Centres are layers >= `min_depth` x `num_layers` (default: the deepest swept layer) whose whole
    band was swept; where no layer qualifies (few layers swept), every fitted layer may be a centre.
    """
    scores = band_scores(rows, width)
    if not scores:
        raise ValueError(f"no candidate could be fitted ({rows[0].error if rows else 'no candidates'})")
    fitted = [r for r in rows if r.candidate in scores]
    depth = num_layers if num_layers is not None else max(r.layer for r in rows)
    swept = {r.layer for r in rows}

    def eligible(r: SweepRow) -> bool:
        full = all(layer in swept for layer in range(r.layer - width, r.layer + width + 1))
        return full and r.layer >= min_depth * depth

    pool = [r for r in fitted if eligible(r)] or fitted

    def key(r: SweepRow) -> tuple:
        return (scores[r.candidate], _finite(r.effect_size), -POOLINGS.order(r.pooling), r.layer)

    best = max(pool, key=key)
    default = [r for r in pool if r.estimator == "mean_difference"]
    if best.estimator == "mean_difference" or not default:
        return best
    best_md = max(default, key=key)
    d = scores[best_md.candidate]
    # standard error of an effect size (mean/std of n paired differences): sqrt((1 + d^2/2) / n)
    se = math.sqrt((1 + d * d / 2) / max(n_validation, 1))
    return best if scores[best.candidate] > d + 2 * se else best_md
