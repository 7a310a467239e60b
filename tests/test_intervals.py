"""The paired-difference and win-rate intervals (legend.metrics), against hand computations and known truths."""

from __future__ import annotations

import numpy as np

from legend.metrics import paired_difference_ci, win_rate, win_rate_ci


def _normal_half_width(values: np.ndarray) -> float:
    """1.96 standard errors of a mean, by hand: what a 95% percentile bootstrap approaches for large n."""
    return 1.96 * values.std() / np.sqrt(values.size)


def test_paired_difference_interval_has_the_normal_width_and_contains_the_observed_difference():
    rng = np.random.default_rng(1)
    a = (rng.random(400) < 0.7).astype(float)
    b = (rng.random(400) < 0.6).astype(float)
    low, high = paired_difference_ci(a, b, n_bootstrap=4000, seed=0)
    observed = a.mean() - b.mean()
    assert low < observed < high
    half = _normal_half_width(a - b)
    assert abs((high - low) / 2 - half) < 0.1 * half, (low, high, half)
    assert abs((low + high) / 2 - observed) < 0.2 * half


def test_paired_difference_uses_the_pairing():
    """Two methods that agree on most pairs: the paired interval is far narrower than resampling them apart."""
    rng = np.random.default_rng(2)
    a = (rng.random(300) < 0.6).astype(float)
    b = a.copy()
    flipped = rng.choice(300, 15, replace=False)
    b[flipped] = 1 - b[flipped]
    low, high = paired_difference_ci(a, b, n_bootstrap=2000, seed=0)
    # Unpaired by hand: resample a and b independently.
    draws = np.random.default_rng(0).integers(0, 300, size=(2, 2000, 300))
    unpaired = a[draws[0]].mean(1) - b[draws[1]].mean(1)
    unpaired_low, unpaired_high = np.quantile(unpaired, [0.025, 0.975])
    assert (high - low) < 0.5 * (unpaired_high - unpaired_low)
    assert paired_difference_ci(a, a) == (0.0, 0.0)  # identical outcomes: no uncertainty about a zero difference


def test_paired_difference_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    truth, covered, trials = 0.7 - 0.55, 0, 200
    for trial in range(trials):
        a = (rng.random(200) < 0.7).astype(float)
        b = (rng.random(200) < 0.55).astype(float)
        low, high = paired_difference_ci(a, b, n_bootstrap=500, seed=trial)
        covered += low <= truth <= high
    assert 0.88 <= covered / trials <= 0.99, covered


def test_win_rate_interval_counts_ties_as_half_and_has_the_normal_width():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 3, 500).astype(float)
    b = rng.integers(0, 3, 500).astype(float)
    outcomes = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))  # by hand
    assert win_rate(a, b) == outcomes.mean()
    low, high = win_rate_ci(a, b, samples=4000, seed=0)
    assert low < outcomes.mean() < high
    half = _normal_half_width(outcomes)
    assert abs((high - low) / 2 - half) < 0.1 * half, (low, high, half)
    assert win_rate_ci(a, a) == (0.5, 0.5)  # all ties
    low, high = win_rate_ci(a + 10, a)  # a always wins
    assert (low, high) == (1.0, 1.0)
