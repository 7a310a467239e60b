"""Choosing a direction's layer, pooling and estimator with evidence (layer 4).

Choose the layer, pooling and estimator of a direction with evidence, and keep the evidence.

`sweep` embeds the contrast pairs ONCE with every candidate layer and pooling captured (one
encoding pass), then for each (layer, pooling, estimator) fits a direction on a seeded train split
and measures its separation on the held-out validation pairs. The ranking rule (documented in
docs/selection.md) is, in order:

1. held-out pair accuracy (share of validation pairs whose harmless answer projects higher);
2. held-out AUC (harmless-vs-harmful answers scored by the projection);
3. held-out effect size: mean / std of the projected paired differences (a continuous separation
   that still ranks when accuracy and AUC saturate at 1.0, which easy contrast sets do);
4. then the paper's defaults: mean difference before pca before logistic, last-token before mean
   pooling, and the deeper layer; so a full tie falls back to the paper's choice.

`select_on_preferences` instead chooses by agreement with a small labelled preference set: the
pairs are split (seeded) into dev and test, every candidate direction (fitted on all contrast pairs)
scores the dev pairs, the best share of positive margins wins (symmetric AUC of the margins breaks
ties), and only the winner is reported on the test pairs. The preference pairs too are encoded once
with every candidate layer/pooling captured.

`select_direction` runs either and returns a `Direction` whose `extra["sweep"]` holds the full table
and `extra["selection"]` the rule, the split and the choice. Explicit `layer`/`pooling`/`estimator`
fix that dimension; the sweep covers the rest.
"""

from __future__ import annotations

from .band import BAND_MIN_DEPTH, BAND_RULE, BAND_WIDTH, band_choice, band_scores
from .cache import CachedDirection, cached_recipe_direction, recipe_cache_key
from .files import build_direction_from_file
from .preferences import preference_agreement, preference_embeddings, select_on_preferences
from .recipes import DEFAULT_RECIPE, PAPER_RECIPE, RECIPES, build_direction, recipe_direction, recipe_settings
from .select import SATURATED_ACCURACY, SATURATED_AUC, saturation_warning, select_direction
from .stable import (
    STABLE_RULE,
    StableChoice,
    repeated_answers_warning,
    stability_figures,
    stable_band_choice,
)
from .sweeps import (
    PREFERENCE_RULE,
    SELECTION_RULE,
    Candidate,
    SweepResult,
    SweepRow,
    all_candidates,
    best_row,
    candidate_layers,
    sweep,
    sweep_embeddings,
)

__all__ = [
    "BAND_MIN_DEPTH",
    "BAND_RULE",
    "BAND_WIDTH",
    "DEFAULT_RECIPE",
    "PAPER_RECIPE",
    "PREFERENCE_RULE",
    "RECIPES",
    "SATURATED_ACCURACY",
    "SATURATED_AUC",
    "SELECTION_RULE",
    "STABLE_RULE",
    "CachedDirection",
    "Candidate",
    "StableChoice",
    "SweepResult",
    "SweepRow",
    "all_candidates",
    "band_choice",
    "band_scores",
    "best_row",
    "build_direction",
    "build_direction_from_file",
    "cached_recipe_direction",
    "candidate_layers",
    "preference_agreement",
    "preference_embeddings",
    "recipe_cache_key",
    "recipe_direction",
    "recipe_settings",
    "repeated_answers_warning",
    "saturation_warning",
    "select_direction",
    "select_on_preferences",
    "stability_figures",
    "stable_band_choice",
    "sweep",
    "sweep_embeddings",
]
