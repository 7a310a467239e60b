"""Numbers computed from embeddings and margins: projection, separation, agreement, bootstrap intervals.

The one home of each: `project` is the margin formula used by annotation, selection and scoring;
`bootstrap_mean_ci` the percentile bootstrap of a per-item mean (accuracies, win rates, paired
differences); `bootstrap_intervals` the same for any vector statistic of resampled pair indices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

# scipy and scikit-learn are imported where they are used: together they are ~1.7 s of start-up that
# `legend annotate` (which never calls them) would otherwise pay.

DEFAULT_BOOTSTRAP = 2000
DEFAULT_CONFIDENCE = 0.95


def project(chosen: torch.Tensor, rejected: torch.Tensor, direction: torch.Tensor) -> np.ndarray:
    """(chosen − rejected) · direction in float64, one number per pair.

    >>> project(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([0.0, 1.0]))
    array([2.])
    """
    return ((chosen.double() - rejected.double()) @ direction.double()).numpy()


def scores(vectors: torch.Tensor, direction: torch.Tensor) -> np.ndarray:
    """vector · direction in float64 for each row (a single text's safety score)."""
    return (vectors.double() @ direction.double()).numpy()


def pair_accuracy(harmless: torch.Tensor, harmful: torch.Tensor, vector: torch.Tensor) -> float:
    """Share of pairs whose harmless answer projects higher than its harmful answer."""
    return float((project(harmless, harmful, vector) > 0).mean())


def auc(harmless: torch.Tensor, harmful: torch.Tensor, vector: torch.Tensor) -> float:
    """ROC AUC of the projection as a harmless-vs-harmful score over all answers."""
    from sklearn.metrics import roc_auc_score

    values = scores(torch.cat([harmless, harmful]), vector)
    labels = np.r_[np.ones(len(harmless)), np.zeros(len(harmful))]
    return float(roc_auc_score(labels, values))


def effect_size(harmless: torch.Tensor, harmful: torch.Tensor, vector: torch.Tensor) -> float:
    """Mean / std of the projected paired differences (harmless − harmful)·v: separation in noise units."""
    diffs = project(harmless, harmful, vector)
    spread = diffs.std()
    if len(diffs) < 2 or spread == 0:
        return float("inf") if diffs.mean() > 0 else float("nan")
    return float(diffs.mean() / spread)


def symmetric_auc(raw: np.ndarray | Sequence[float]) -> float:
    """AUC of the margin separating (chosen, rejected) from the swapped (rejected, chosen) order.

    Every pair read in its labelled order scores m, read swapped it scores −m (margins are
    antisymmetric), so the AUC is P(m_i > −m_j) = P(m_i + m_j > 0) over all pairs i, j, ties 1/2:
    the Walsh-average form of the Wilcoxon signed-rank statistic. Unlike the share of positive
    margins it rewards large margins on agreeing pairs and small ones on disagreeing pairs.

    >>> symmetric_auc([1.0, 2.0, -0.5])  # 8 of the 9 sums m_i + m_j are positive
    0.888888888888889
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size == 0 or not np.any(raw):
        return float("nan") if raw.size == 0 else 0.5
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(raw.size), np.zeros(raw.size)]
    return float(roc_auc_score(labels, np.r_[raw, -raw]))


def win_outcomes(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> np.ndarray:
    """1 where a beats b, ½ for a tie, 0 otherwise.

    >>> win_outcomes([1, 2, 3], [0, 2, 4]).tolist()
    [1.0, 0.5, 0.0]
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"win_rate needs two score lists of the same length, got {a.shape} and {b.shape}")
    return (a > b) + 0.5 * (a == b)


def win_rate(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Share of items where a beats b; a tie counts one half.

    >>> win_rate([1, 2, 3], [0, 2, 4])
    0.5
    """
    outcome = win_outcomes(a, b)
    if outcome.size == 0:
        raise ValueError("win_rate needs at least one item")
    return float(outcome.mean())


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = DEFAULT_CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean: resample the items with replacement `n_bootstrap` times.

    Used for accuracies (0/1 per pair), win rates (1/½/0 per prompt) and paired differences
    (the per-pair difference of two 0/1 outcomes, so both sides see the same resampled pairs).
    NaN, NaN for no items.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_bootstrap, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_difference_ci(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = DEFAULT_CONFIDENCE,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of mean(a) − mean(b) over the same resampled pairs."""
    diff = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    return bootstrap_mean_ci(diff, n_bootstrap=n_bootstrap, seed=seed, level=level)


def win_rate_ci(
    a: np.ndarray, b: np.ndarray, *, samples: int = DEFAULT_BOOTSTRAP, level: float = DEFAULT_CONFIDENCE, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of `win_rate(a, b)`, resampling items (prompts)."""
    return bootstrap_mean_ci(win_outcomes(a, b), n_bootstrap=samples, seed=seed, level=level)


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    n_resamples: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile-bootstrap intervals of a vector statistic of pair indices.

    `statistic(indices)` returns one value per metric; scipy draws the resamples (pairs with
    replacement). Resamples where a metric is undefined (NaN, e.g. no pair with chosen shorter)
    are left out of that metric's percentiles. Returns (low, high, finite resamples per metric).
    """
    from scipy import stats

    with warnings.catch_warnings():
        # scipy warns when some resamples give NaN; those are handled below, metric by metric.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (np.arange(n),),
            lambda idx: statistic(np.asarray(idx, dtype=np.int64)),
            n_resamples=n_resamples,
            vectorized=False,
            paired=False,
            method="percentile",
            confidence_level=confidence,
            rng=np.random.default_rng(seed),
        )
    distribution = np.atleast_2d(result.bootstrap_distribution)
    alpha = (1 - confidence) / 2
    finite = np.isfinite(distribution).sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, as they should
        low, high = np.nanquantile(distribution, [alpha, 1 - alpha], axis=1)
    return low, high, finite


def random_unit_directions(dim: int, n: int = 200, seed: int = 0) -> np.ndarray:
    """A (dim × n) float64 matrix of seeded Gaussian directions with unit columns.

    >>> r = random_unit_directions(5, 3, seed=1)
    >>> r.shape, bool(np.allclose(np.linalg.norm(r, axis=0), 1.0))
    ((5, 3), True)
    """
    if dim < 1 or n < 1:
        raise ValueError(f"need a positive dimension and number of directions, got {dim} and {n}")
    matrix = np.random.default_rng(seed).standard_normal((dim, n))
    return matrix / np.linalg.norm(matrix, axis=0, keepdims=True)
