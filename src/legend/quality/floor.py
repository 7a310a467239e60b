"""The random floor: the same metrics for seeded random unit directions at the same layer and pooling over the same
pairs (`random_floor`, `floor_from_random_margins`), the one line that reports it (`floor_line`), and the label
evidence an annotation reports (`label_evidence`: agreement with intervals against the floor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..metrics import random_unit_directions
from .agreement import DEFAULT_BOOTSTRAP, evaluate_margin_lengths, finite_or_none, margin_metrics

DEFAULT_RANDOM_DIRECTIONS = 200  # random unit directions of the floor
FLOOR_QUANTILE = 0.95
# The metrics compared with the random floor (severity only where severity is known).
FLOOR_METRICS = ("share_positive", "agreement_length_balanced", "auc", "severity_spearman")


def random_floor(
    differences: np.ndarray,
    raw: Sequence[float] | np.ndarray,
    chosen_texts: Sequence[str],
    rejected_texts: Sequence[str],
    severity: Sequence[float] | np.ndarray | None = None,
    *,
    length: Callable[[str], int] = len,
    n_directions: int = DEFAULT_RANDOM_DIRECTIONS,
    seed: int = 0,
    quantile: float = FLOOR_QUANTILE,
) -> dict[str, Any]:
    """The real margins' metrics against those of `n_directions` random unit directions (the null).

    `differences` are the pairs' embedding differences (n_pairs × dim) at the direction's layer and
    pooling, `raw` the real direction's margins of the same pairs. For each metric in FLOOR_METRICS:
    the real value, the random directions' `quantile` (the floor), mean and max, and the percentile
    of the real value among the random ones (ties count half). Random margins are one matmul D @ R.

    Args:
        differences: e(prompt+chosen) − e(prompt+rejected) per pair [n_pairs, hidden].
        raw: the real direction's margins.
        chosen_texts: the chosen answers (for the length-balanced metric).
        rejected_texts: the rejected answers.
        severity: severity differences, when known.
        length: how an answer's length is measured.
        n_directions: random unit directions drawn (seeded).
        seed: their seed.
        quantile: the floor's quantile of the random values.

    Returns:
        {"n_directions", "quantile", "metrics": {name: {"value", "floor", "percentile", ...}}}.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> signal = rng.standard_normal(16)
    >>> diffs = rng.standard_normal((300, 16)) + signal  # every pair leans the same way
    >>> floor = random_floor(diffs, diffs @ signal, ["a"] * 300, ["a"] * 300, n_directions=50)
    >>> floor["metrics"]["share_positive"]["percentile"] > 95
    True
    """
    diffs = np.asarray(differences, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    if diffs.ndim != 2 or diffs.shape[0] != raw.size:
        raise ValueError(f"{raw.size} margins but embedding differences of shape {diffs.shape}")
    if len(chosen_texts) != raw.size or len(rejected_texts) != raw.size:
        raise ValueError(f"{raw.size} margins but {len(chosen_texts)} chosen and {len(rejected_texts)} rejected texts")
    length_diff = np.array([length(c) - length(r) for c, r in zip(chosen_texts, rejected_texts)], dtype=np.float64)
    margins = diffs @ random_unit_directions(diffs.shape[1], n_directions, seed)
    floor = floor_from_random_margins(margins, raw, length_diff, severity, seed=seed, quantile=quantile)
    floor["dim"] = int(diffs.shape[1])
    return floor


def floor_from_random_margins(
    random_margins: np.ndarray,
    raw: Sequence[float] | np.ndarray,
    length_diff: np.ndarray,
    severity: Sequence[float] | np.ndarray | None = None,
    *,
    seed: int = 0,
    quantile: float = FLOOR_QUANTILE,
) -> dict[str, Any]:
    """`random_floor` given the random directions' margins (n_pairs × n_directions) instead of the differences.

    An annotation computes them in its one encoding pass (the differences times `random_unit_directions`),
    so the floor needs neither a second pass nor the stored differences.
    """
    margins = np.asarray(random_margins, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    length_diff = np.asarray(length_diff, dtype=np.float64)
    if margins.ndim != 2 or margins.shape[0] != raw.size or length_diff.shape != raw.shape:
        raise ValueError(f"{raw.size} margins but random margins of shape {margins.shape}")
    n_directions = margins.shape[1]
    severity_diff = None if severity is None else np.asarray(severity, dtype=np.float64)
    names = [m for m in FLOOR_METRICS if m != "severity_spearman" or severity_diff is not None]
    real = margin_metrics(raw, length_diff, severity_diff)
    null = np.array(
        [[margin_metrics(margins[:, j], length_diff, severity_diff)[m] for m in names] for j in range(n_directions)]
    )
    metrics = {}
    for k, name in enumerate(names):
        values = null[:, k][np.isfinite(null[:, k])]
        value = real[name]
        defined = bool(values.size) and math.isfinite(value)
        metrics[name] = {
            "value": finite_or_none(value),
            "floor": finite_or_none(np.quantile(values, quantile)) if values.size else None,
            "random_mean": finite_or_none(values.mean()) if values.size else None,
            "random_max": finite_or_none(values.max()) if values.size else None,
            "percentile": (
                finite_or_none(100.0 * ((values < value).mean() + 0.5 * (values == value).mean())) if defined else None
            ),
        }
    return {
        "n_directions": n_directions,
        "seed": seed,
        "quantile": quantile,
        "n": int(raw.size),
        "metrics": metrics,
        "method": "seeded Gaussian unit directions at the same layer and pooling, same pairs (margins = D @ R)",
    }


EVIDENCE_METRICS = ("share_positive", "agreement_length_balanced", "auc")
# A bootstrap interval of a share is only as good as the normal approximation it resembles, which wants
# n·p·(1−p) ≥ 10 (the usual rule for a proportion): with fewer pairs, or nearly all of them agreeing,
# the interval comes out too narrow (8 pairs that all agree give [1.000, 1.000]).
MIN_BINOMIAL_SPREAD = 10.0


def few_pairs_caution(n: int, share: float | None) -> str | None:
    """A caution when n pairs with this share of agreeing ones are too few for the interval, else None.

    >>> few_pairs_caution(8, 1.0).split(": ")[0]
    '8 pairs, 100% agreeing'
    >>> "n·p·(1−p) = 0.0 < 10" in few_pairs_caution(8, 1.0)
    True
    >>> few_pairs_caution(1101, 0.635) is None
    True
    """
    if share is None or not math.isfinite(share):
        return None
    spread = n * share * (1.0 - share)
    if spread >= MIN_BINOMIAL_SPREAD:
        return None
    return (
        f"{n} pairs, {share:.0%} agreeing: too few for these intervals (n·p·(1−p) = {spread:.1f} < "
        f"{MIN_BINOMIAL_SPREAD:g}), which come out too narrow; use several hundred pairs"
    )


def label_evidence(
    raw: np.ndarray,
    length_diff: np.ndarray,
    random_margins: np.ndarray | None,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    labels: str = "the data's",
) -> dict[str, Any]:
    """Agreement of margins with the data's labels (chosen = preferred) with 95% CIs, against the random floor.

    What `legend annotate` reports when the layout carries labels (or when told they do), from the one
    encoding pass: `random_margins` are the pairs' margins on the floor's random unit directions, and
    `length_diff` each pair's length(chosen) − length(rejected) in characters.

    Args:
        raw: the margins.
        length_diff: length differences (for the length-balanced agreement).
        random_margins: [n_pairs, n_directions] margins of random unit directions (None: no floor).
        n_bootstrap: resamples of the intervals.
        seed: their seed.
        labels: where the labels come from (shown with the numbers).

    Returns:
        {"labels", "n", "metrics": {name: {"value", "ci_low", "ci_high", "floor", "percentile", "above"}},
        "random_directions", "floor_quantile", "confidence", "caution"}; "caution" is a sentence when the pairs
        are too few for the intervals (`few_pairs_caution`), else None.

    >>> rng = np.random.default_rng(0)
    >>> raw = rng.normal(0.5, 1.0, 400)
    >>> evidence = label_evidence(raw, rng.normal(0, 50, 400), rng.normal(0, 1, (400, 50)), n_bootstrap=200)
    >>> evidence["metrics"]["share_positive"]["above"]
    True
    """
    evaluation = evaluate_margin_lengths(raw, length_diff, n_bootstrap=n_bootstrap, seed=seed)
    floor = None if random_margins is None else floor_from_random_margins(random_margins, raw, length_diff, seed=seed)
    metrics = {}
    for name in EVIDENCE_METRICS:
        metric = evaluation["metrics"][name]
        floor_metric = (floor or {}).get("metrics", {}).get(name) or {}
        value, limit = metric["value"], floor_metric.get("floor")
        metrics[name] = {
            "value": value,
            "ci_low": metric["ci_low"],
            "ci_high": metric["ci_high"],
            "floor": limit,
            "percentile": floor_metric.get("percentile"),
            "above": None if value is None or limit is None else bool(value > limit),
        }
    return {
        "labels": labels,
        "n": evaluation["n"],
        "metrics": metrics,
        "random_directions": None if floor is None else floor["n_directions"],
        "floor_quantile": FLOOR_QUANTILE,
        "confidence": evaluation["settings"]["confidence"],
        "caution": few_pairs_caution(evaluation["n"], metrics["share_positive"]["value"]),
    }


def floor_line(floor: dict[str, Any], name: str = "share_positive") -> str:
    """One line: the real value, the random floor and the real value's percentile among random directions."""
    metric = floor["metrics"].get(name)
    if metric is None or metric["value"] is None or metric["floor"] is None:
        return f"{name}: n/a"
    pct = "n/a" if metric["percentile"] is None else f"{metric['percentile']:.1f}"
    verdict = "above" if metric["value"] > metric["floor"] else "NOT above"
    return (
        f"{name} {metric['value']:.3f} vs random floor {metric['floor']:.3f} "
        f"({int(round(100 * floor['quantile']))}th pct of {floor['n_directions']} random directions): "
        f"{verdict} the floor, at the {pct}th percentile"
    )
