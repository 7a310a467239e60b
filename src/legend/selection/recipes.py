"""The recommended recipe and the paper's, by name: the ONE home of what `legend` recommends."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..data import ContrastPair, read_contrast_pairs
from ..directions import (
    Direction,
    DirectionSettings,
    build_direction,
)
from ..encoding import Encoder
from ..models import LoadedModel
from ..resources import XSTEST_PAIRS, sample_path
from .select import select_direction

# ---------------------------------------------------------------- the recommended recipe (issue 9)

# The paper's recipe, for comparison: induced pairs vs one refusal string, last layer, last token.
PAPER_RECIPE = "paper"
# legend's default recipe (the demo's, and the one benchmarks import): see docs/selection.md.
DEFAULT_RECIPE = "legend"
RECIPES = (DEFAULT_RECIPE, PAPER_RECIPE)


def recipe_settings(recipe: str = DEFAULT_RECIPE, **fields: Any) -> DirectionSettings:
    """The DirectionSettings of a named recipe (extra `fields`, e.g. encoding=..., override them).

    * "legend" (default): the automatic choice of docs/selection.md: mean pooling over the answer
      tokens, the mean-difference estimator, the layer chosen by `--select auto` on the contrast pairs.
    * "paper": the paper's exact choice: last layer, last token, mean difference.

    >>> recipe_settings("paper").layer, recipe_settings("paper").pooling
    (-1, 'last')
    """
    if recipe == DEFAULT_RECIPE:
        base = DirectionSettings(select="auto", pooling="mean", estimator="mean_difference")
    elif recipe == PAPER_RECIPE:
        base = DirectionSettings(select="none", layer=-1, pooling="last", estimator="mean_difference")
    else:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    return dataclasses.replace(base, **fields)


def recipe_direction(
    lm: Encoder | LoadedModel,
    recipe: str = DEFAULT_RECIPE,
    pairs: Sequence[ContrastPair] | None = None,
    **fields: Any,
) -> Direction:
    """Build the direction of a named recipe on `lm` (one encoding pass over the contrast pairs).

    `pairs` default to the recipe's own contrast pairs: for "legend", the bundled XSTest contrast
    pairs (`legend.resources.XSTEST_PAIRS`); the "paper" recipe needs induced pairs (see
    legend.induce) and has no default. This is the ONE place the recommended recipe lives: the demo
    and the reward-model benchmark call it.
    """
    settings = recipe_settings(recipe, **fields)
    if pairs is None:
        if recipe == PAPER_RECIPE:
            raise ValueError("the paper recipe needs induced contrast pairs (legend induce)")
        pairs = read_contrast_pairs(sample_path(XSTEST_PAIRS))
    direction = select_direction(lm, pairs, settings) if settings.selecting else build_direction(lm, pairs, settings)
    direction.extra["recipe"] = recipe
    return direction
