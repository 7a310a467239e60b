"""Estimators: each one, on paired embeddings with a planted direction under noise, recovers it (cosine > 0.99),
points to the harmless side, and returns a float32 unit vector; an estimator registered from outside is offered
by the selection sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from legend.directions import ESTIMATORS, ContrastEmbeddings, register_estimator, unit
from legend.selection import all_candidates, sweep_embeddings


def planted(n: int = 200, dim: int = 64, shift: float = 3.0, seed: int = 0, base_scale: float = 2.0):
    """Paired embeddings: a shared per-pair base (the question), harmless = base + shift·v + noise, harmful = base."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(dim)
    v /= np.linalg.norm(v)
    base = rng.standard_normal((n, dim)) * base_scale
    harmless = base + shift * v + 0.3 * rng.standard_normal((n, dim))
    harmful = base + 0.3 * rng.standard_normal((n, dim))
    return torch.tensor(harmless, dtype=torch.float32), torch.tensor(harmful, dtype=torch.float32), v


@pytest.mark.parametrize("name", ["mean_difference", "pca", "logistic"])
def test_each_estimator_recovers_a_planted_direction(name):
    # The probe ignores the pairing, so the questions' shared variation is noise to it: plant with less of it.
    harmless, harmful, v = planted(base_scale=2.0 if name != "logistic" else 0.3)
    vector = ESTIMATORS[name](harmless, harmful)
    assert vector.dtype == torch.float32 and vector.shape == (64,)
    assert float(vector.norm()) == pytest.approx(1.0, abs=1e-5)
    # Recovered and signed towards the harmless side; on separable classes a probe finds a separating direction
    # (close to, not equal to, the mean shift): 0.95 measured with this seed.
    assert float(vector.double().numpy() @ v) > (0.99 if name != "logistic" else 0.9)
    # Swapping the sides flips it.
    assert float(ESTIMATORS[name](harmful, harmless).double().numpy() @ v) < 0


def test_zero_difference_is_refused():
    x = torch.ones(4, 8)
    with pytest.raises(ValueError, match="zero or not finite"):
        ESTIMATORS["mean_difference"](x, x)
    with pytest.raises(ValueError, match="zero or not finite"):
        unit(torch.tensor([float("nan"), 1.0]))


def test_an_estimator_registered_from_outside_joins_the_sweep():
    def median_difference(harmless: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
        return unit((harmless - harmful).double().median(0).values)

    register_estimator("median_difference", median_difference, description="median of the paired differences")
    try:
        harmless, harmful, v = planted(n=50)
        embeddings = ContrastEmbeddings({(1, "mean"): harmless}, {(1, "mean"): harmful}, 0)
        result = sweep_embeddings(embeddings, all_candidates([1], ["mean"], ["median_difference"]))
        assert [r.estimator for r in result.rows] == ["median_difference"]
        assert result.rows[0].accuracy == 1.0
        assert float(median_difference(harmless, harmful).double().numpy() @ v) > 0.95
    finally:
        ESTIMATORS.unregister("median_difference")
