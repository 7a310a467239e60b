"""legend: annotate preference datasets with safety margins by representation engineering.

Implements Legend (Feng et al., AAAI 2025, arXiv 2406.08124): build a concept direction from
contrast pairs, project each preference pair onto it, bin the projections into margins that
TRL's RewardTrainer reads from the `margin` column.

The names below are the public API (`__all__`); everything else is internal and may move. They are
imported on first use, so `import legend` stays light (the CLI starts without loading torch).

>>> import legend
>>> lm = legend.tiny_model()  # a random 4-layer Llama: margins mean nothing, the plumbing is real
>>> pairs = [legend.ContrastPair(f"Question {i}?", f"Sure: do {i}.", "I can't help.") for i in range(8)]
>>> direction = legend.build_direction(lm, pairs)  # the recommended recipe: mean pooling, layer chosen
>>> direction.pooling, direction.extra["recipe"]
('mean', 'legend')
>>> rows = [legend.PairView(prompt=(), chosen="I can't help.", rejected="Sure: do it.")]
>>> legend.compute_margins(lm, rows, direction).raw.shape
(1,)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> the module that defines it
_API = {
    # artifacts and settings
    "Direction": "legend.directions",
    "DirectionSettings": "legend.directions",
    "AnnotateSettings": "legend.annotation",
    "Annotation": "legend.annotation",
    "EncodeConfig": "legend.encoding",
    "ModelSpec": "legend.models",
    "Binning": "legend.margins",
    # data
    "ContrastPair": "legend.data",
    "PairView": "legend.data",
    "ColumnNames": "legend.data",
    "DataError": "legend.errors",
    # the jobs
    "load_model": "legend.models",
    "wrap_model": "legend.models",
    "build_direction": "legend.selection",
    "select_direction": "legend.selection",
    "recipe_direction": "legend.selection",
    "build_direction_from_file": "legend.selection",
    "annotate": "legend.annotation",
    "annotate_file": "legend.pipeline",
    "compute_margins": "legend.margins",
    "evaluate_margins": "legend.quality",
    "random_floor": "legend.quality",
    # extension points
    "Encoder": "legend.encoding",
    "register_encoder": "legend.encoding",
    "register_pooling": "legend.encoding",
    "register_estimator": "legend.directions",
    "register_engine": "legend.engines",
    # examples and tests
    "tiny_model": "legend.testing",
}

__all__ = [
    "AnnotateSettings",
    "Annotation",
    "Binning",
    "ColumnNames",
    "ContrastPair",
    "DataError",
    "Direction",
    "DirectionSettings",
    "EncodeConfig",
    "Encoder",
    "ModelSpec",
    "PairView",
    "__version__",
    "annotate",
    "annotate_file",
    "build_direction",
    "build_direction_from_file",
    "compute_margins",
    "evaluate_margins",
    "load_model",
    "random_floor",
    "recipe_direction",
    "register_encoder",
    "register_engine",
    "register_estimator",
    "register_pooling",
    "select_direction",
    "tiny_model",
    "wrap_model",
]
assert set(__all__) == {"__version__", *_API}

if TYPE_CHECKING:  # for type checkers and the layer test: what the lazy names are
    from .annotation import AnnotateSettings, Annotation, annotate
    from .data import ColumnNames, ContrastPair, PairView
    from .directions import Direction, DirectionSettings, register_estimator
    from .encoding import EncodeConfig, Encoder, register_encoder, register_pooling
    from .engines import register_engine
    from .errors import DataError
    from .margins import Binning, compute_margins
    from .models import ModelSpec, load_model, wrap_model
    from .pipeline import annotate_file
    from .quality import evaluate_margins, random_floor
    from .selection import build_direction, build_direction_from_file, recipe_direction, select_direction
    from .testing import tiny_model


# Subpackages reachable as attributes after `import legend` (legend.data.read_contrast_pairs, ...).
_SUBMODULES = {
    "annotation", "data", "directions", "encoding", "engines", "io", "margins", "metrics", "models", "quality",
    "registries", "selection",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"legend.{name}")
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'legend' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
