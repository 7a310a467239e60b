"""The recommended recipe and the paper's, by name: the ONE home of what `legend` recommends."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..data import ContrastPair, read_contrast_pairs
from ..directions import Direction, DirectionSettings
from ..directions import build_direction as build_configuration
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
        base = DirectionSettings(select="auto", pooling="mean", estimator="mean_difference", recipe=recipe)
    elif recipe == PAPER_RECIPE:
        base = DirectionSettings(select="none", layer=-1, pooling="last", estimator="mean_difference", recipe=recipe)
    else:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    return dataclasses.replace(base, **fields)


def build_direction(
    model: Encoder | LoadedModel,
    pairs: Sequence[ContrastPair] | None = None,
    settings: DirectionSettings | None = None,
    *,
    recipe: str = DEFAULT_RECIPE,
    **fields: Any,
) -> Direction:
    """Build a safety direction on `model`: the recommended recipe unless told otherwise.

    The recipe gives the contrast pairs when none are given (for "legend", the bundled XSTest pairs:
    human-labelled compliant vs refusing answers to unsafe prompts) and the settings (mean pooling
    over the answer tokens, mean difference, the layer chosen on the pairs; "paper": last layer,
    last token). Explicit `fields` (layer=, pooling=, estimator=, select=, encoding=, name=, ...)
    override the recipe's, and a whole `settings` replaces it. The direction records its recipe
    (`extra["recipe"]`).

    Args:
        model: the annotator model (an Encoder or a LoadedModel).
        pairs: contrast pairs (question, harmful, harmless); default: the recipe's own.
        settings: settings to use instead of the recipe's.
        recipe: "legend" (the recommended recipe) or "paper" (the paper's exact one; it needs induced pairs).
        **fields: DirectionSettings fields overriding the recipe's.

    Returns:
        The Direction, with its held-out separation and (when chosen) the sweep behind the choice.

    >>> import legend
    >>> lm = legend.tiny_model()
    >>> pairs = [legend.ContrastPair(f"Q{i}?", f"Sure, {i}.", "No.") for i in range(6)]
    >>> d = build_direction(lm, pairs, recipe="paper")
    >>> (d.layer, d.pooling, d.estimator, d.extra["recipe"])
    (4, 'last', 'mean_difference', 'paper')
    >>> build_direction(lm, pairs, layer=2).pooling  # the recommended recipe: mean pooling; the layer given
    'mean'
    """
    chosen = settings if settings is not None else recipe_settings(recipe, **fields)
    if settings is not None and fields:
        chosen = dataclasses.replace(settings, **fields)
    if pairs is None:
        if recipe == PAPER_RECIPE:
            raise ValueError("the paper recipe needs induced contrast pairs (legend induce): give pairs")
        pairs = read_contrast_pairs(sample_path(XSTEST_PAIRS))
    if chosen.selecting:
        direction = select_direction(model, pairs, chosen)
    else:
        direction = build_configuration(model, pairs, chosen)
    direction.extra["recipe"] = chosen.recipe
    return direction


def recipe_direction(
    lm: Encoder | LoadedModel,
    recipe: str = DEFAULT_RECIPE,
    pairs: Sequence[ContrastPair] | None = None,
    **fields: Any,
) -> Direction:
    """`build_direction(lm, pairs, recipe=recipe, **fields)` (its older name).

    Args:
        lm: the model.
        recipe: "legend" or "paper".
        pairs: contrast pairs (default: the recipe's own).
        **fields: DirectionSettings fields overriding the recipe's.

    Returns:
        The Direction.

    >>> import legend
    >>> recipe_direction(legend.tiny_model(), "paper", [legend.ContrastPair("Q?", "Sure.", "No.")] * 4).pooling
    'last'
    """
    return build_direction(lm, pairs, recipe=recipe, **fields)
