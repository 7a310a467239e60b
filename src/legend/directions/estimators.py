"""Estimators: paired embeddings -> a unit vector pointing to the harmless side (an extension point).

Each estimator takes `harmless` and `harmful` [n, hidden] tensors where row i of both answers the
same question, and returns a float32 unit vector. `register_estimator` adds one; `--estimator` and
the selection sweep then offer it, and their help texts are generated from `ESTIMATORS`.

>>> import torch
>>> harmless = torch.tensor([[2.0, 1.0], [2.0, -1.0]])
>>> harmful = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
>>> ESTIMATORS["mean_difference"](harmless, harmful).tolist()
[1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..registries import ESTIMATORS

EstimatorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def register_estimator(
    name: str, function: EstimatorFn, *, description: str | None = None, replace: bool = False
) -> EstimatorFn:
    """Make `function` available as `--estimator NAME` and in the selection sweep.

    Args:
        name: the estimator's name.
        function: `(harmless [n, hidden], harmful [n, hidden]) -> unit vector [hidden]` (float32),
            pointing to the harmless side; raise ValueError when it cannot be fitted.
        description: one line for help texts.
        replace: replace an existing estimator of that name.

    Returns:
        `function`.

    >>> median = lambda a, b: unit((a - b).double().median(0).values)
    >>> _ = register_estimator("median_difference", median, description="median of the paired differences")
    >>> ESTIMATORS["median_difference"](torch.ones(3, 2), torch.zeros(3, 2)).tolist()
    [0.7071067690849304, 0.7071067690849304]
    >>> _ = ESTIMATORS.unregister("median_difference")
    """
    return ESTIMATORS.register(name, function, description=description, replace=replace)


def unit(vector: torch.Tensor) -> torch.Tensor:
    """`vector` / its norm, as float32; a zero or non-finite vector is a ValueError.

    >>> unit(torch.tensor([3.0, 4.0])).tolist()
    [0.6000000238418579, 0.800000011920929]
    """
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("the direction is zero or not finite: harmful and harmless embeddings do not differ")
    return (vector / norm).float()


def mean_difference(harmless: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
    """The paper's Standard Margin Vector: normalised mean(harmless) - mean(harmful)."""
    return unit(harmless.double().mean(0) - harmful.double().mean(0))


def pca_difference(harmless: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
    """First principal component of the paired differences, signed to point to the harmless side.

    As in RepE, the differences are not centred: centring would remove the very shift between the
    two sides and leave only the noise's main axis.
    """
    diffs = (harmless - harmful).double()
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    component = vh[0]
    if (diffs @ component).mean() < 0:
        component = -component
    return unit(component)


def logistic_probe(harmless: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
    """Weights of an L2-regularised logistic regression (scikit-learn) separating harmless from harmful."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([harmless, harmful]).double().numpy()
    y = np.r_[np.ones(len(harmless)), np.zeros(len(harmful))]
    scaler = StandardScaler().fit(x)
    probe = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x), y)
    # Map the weights back to the unscaled space so the projection is a plain dot product.
    weights = probe.coef_[0] / np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return unit(torch.from_numpy(weights))


register_estimator("mean_difference", mean_difference)
register_estimator("pca", pca_difference)
register_estimator("logistic", logistic_probe)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of pair indices; at least one pair on each side when n >= 2.

    >>> [part.tolist() for part in split_indices(5, 0.2, seed=0)]
    [[0, 1, 3, 4], [2]]
    """
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(n * test_fraction))) if n >= 2 else 0
    return np.sort(order[n_test:]), np.sort(order[:n_test])
