"""Concept directions (layer 3): estimators, the Direction artifact and its card, building from contrast pairs.

A direction points from the harmful side of a concept to the harmless side in the hidden space of
one layer. The paper's Standard Margin Vector is the normalised mean difference; PCA of paired
differences and a logistic probe are offered too (`estimators`, a registry). `artifact` holds the
`Direction` folder format (safetensors + config.json + a model card, `card`), `build` how one is
fitted from contrast pairs.
"""

from ..errors import DirectionMismatch
from .artifact import CARD_FILE, CONFIG_FILE, FORMAT_VERSION, HUB_FILES, VECTOR_FILE, Direction, ModelIdentity
from .build import (
    SELECT_MODES,
    ContrastEmbeddings,
    DirectionSettings,
    build_direction,
    embed_contrast_pairs,
    fit_direction_vector,
)
from .card import SEPARATION_CAVEAT, direction_card, looks_like_repo_id
from .estimators import (
    ESTIMATORS,
    EstimatorFn,
    logistic_probe,
    mean_difference,
    pca_difference,
    register_estimator,
    split_indices,
    unit,
)

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "ESTIMATORS",
    "FORMAT_VERSION",
    "HUB_FILES",
    "SELECT_MODES",
    "SEPARATION_CAVEAT",
    "VECTOR_FILE",
    "ContrastEmbeddings",
    "Direction",
    "DirectionMismatch",
    "DirectionSettings",
    "EstimatorFn",
    "ModelIdentity",
    "build_direction",
    "direction_card",
    "embed_contrast_pairs",
    "fit_direction_vector",
    "logistic_probe",
    "looks_like_repo_id",
    "mean_difference",
    "pca_difference",
    "register_estimator",
    "split_indices",
    "unit",
]
