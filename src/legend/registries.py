"""The extension points' registries, with their built-in entries declared (layer 0: no heavy import).

Each registry is filled by the module that implements its entries (`legend.encoding.pooling`,
`legend.directions.estimators`, `legend.encoding.encoder`, `legend.engines`); the descriptions of the
built-ins are declared here so that the CLI can offer the choices and generate its help without
importing torch. A user's plugin registers with the `register_*` function of the extension point
(`legend.encoding.register_pooling`, ...), and the CLI loads plugins named by the `legend.plugins`
entry-point group before it builds its commands.

>>> POOLINGS.choices(), ENGINES.choices()
(('last', 'mean'), ('local', 'ray'))
"""

from __future__ import annotations

from typing import Any

from .registry import Registry

POOLINGS: Registry[Any] = Registry("pooling")
POOLINGS.declare("last", "the last token, the answer's end-of-turn marker, as the paper")
POOLINGS.declare("mean", "the mean over the answer tokens")

ESTIMATORS: Registry[Any] = Registry("estimator")
ESTIMATORS.declare("mean_difference", "the paper's normalised mean difference")
ESTIMATORS.declare("pca", "first principal component of the paired differences")
ESTIMATORS.declare("logistic", "an L2-regularised logistic probe")

ENCODERS: Registry[Any] = Registry("encoder")
ENCODERS.declare("transformers", "a transformers model read through layer hooks, with early exit and prefix sharing")

ENGINES: Registry[Any] = Registry("engine")
ENGINES.declare("local", "one process, the input streamed in chunks; resumes after a stop")
ENGINES.declare("ray", "Ray Data actors, one GPU each on a cluster (pip install 'legend[ray]')")

ALL = {"pooling": POOLINGS, "estimator": ESTIMATORS, "encoder": ENCODERS, "engine": ENGINES}
