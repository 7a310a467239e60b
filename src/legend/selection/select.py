"""`select_direction`: sweep, choose, refit on all pairs; and the saturation warning."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..data import ContrastPair, PairView
from ..directions import (
    ESTIMATORS,
    Direction,
    DirectionSettings,
)
from ..encoding import POOLINGS, Encoder, template_kind
from ..models import LoadedModel
from .preferences import preference_embeddings, select_on_preferences
from .stable import STABLE_RULE, repeated_answers_warning, stable_band_choice
from .sweeps import sweep


def select_direction(
    lm: Encoder | LoadedModel,
    pairs: Sequence[ContrastPair],
    settings: DirectionSettings | None = None,
    *,
    select_on: Sequence[PairView] | None = None,
    groups: Sequence[Any] | None = None,
    **fields: Any,
) -> Direction:
    """Choose the layer (and, with `select_on`, pooling and estimator) of a direction; return it refitted on all pairs.

    The contrast choice is the stable band rule (`legend.selection.stable`, STABLE_RULE): the layer
    whose band of layers separates held-out pairs best across 200 bootstrap resamples, within one
    standard error, nearest the middle of the allowed range; resamples stratified by source when
    `groups` (the source of each pair) has two or more values. Unset pooling and estimator take the
    recommended recipe's (mean over the answer tokens, mean difference); given ones are fixed, and
    with another estimator the layer is still chosen on the mean-difference evidence, then the
    estimator is fitted there. A given layer is used as it is. `select_on` (labelled preference
    pairs, chosen = safer) chooses among every swept layer, pooling and estimator by agreement with
    those labels on a dev split instead.

    The direction's `heldout` is the chosen row's 80/20 validation (`extra["sweep"]` has every row);
    `extra["selection"]` holds the rule, the choice, its stability and the evidence behind it, and
    `extra["warnings"]` an unstable or edge choice and contrast pairs whose answers mostly repeat.

    Args:
        lm: the model (an Encoder or a LoadedModel).
        pairs: contrast pairs (question, harmful, harmless).
        settings: fixed layer/pooling/estimator, seeds, encoding (default: select auto).
        select_on: labelled preference pairs to choose by instead.
        groups: the source of each pair (a file name), for stratified resampling.
        **fields: DirectionSettings fields replacing the settings'.

    Returns:
        The Direction.

    >>> import legend
    >>> pairs = [legend.ContrastPair(f"Q{i}?", f"Sure, {i}.", f"No, {i}.") for i in range(12)]
    >>> direction = select_direction(legend.tiny_model(), pairs)
    >>> direction.pooling, direction.layer == direction.extra["selection"]["centre"]
    ('mean', True)
    >>> 0 <= direction.extra["selection"]["stability"]["share_in_band"] <= 1
    True
    """
    settings = dataclasses.replace(settings or DirectionSettings(select="auto"), **fields)
    layer = settings.layer
    by_preferences = select_on is not None
    if by_preferences:
        poolings = POOLINGS.choices() if settings.pooling is None else (settings.pooling,)
        estimators = tuple(ESTIMATORS) if settings.estimator is None else (settings.estimator,)
    else:
        poolings = (settings.pooling or "mean",)
        estimators = (settings.estimator or "mean_difference",)
    kind = template_kind(lm.tokenizer, settings.template)
    encoding = settings.encoding
    result, embeddings = sweep(
        lm,
        pairs,
        layers=None if layer is None else (layer,),
        layer_stride=settings.layer_stride,
        poolings=poolings,
        estimators=estimators,
        template=kind,
        max_length=settings.max_length,
        encoding=encoding,
        test_fraction=settings.test_fraction,
        seed=settings.seed,
        groups=groups,
    )
    fixed = {
        k: v
        for k, v in (("layer", layer), ("pooling", settings.pooling), ("estimator", settings.estimator))
        if v is not None
    }
    selection: dict[str, Any] = {"by": "contrast", "fixed": fixed, "validation": result.extra.get("validation")}
    warnings: list[str] = []
    if select_on is not None:
        swept_layers = sorted({row.layer for row in result.rows})
        swept_poolings = list(dict.fromkeys(row.pooling for row in result.rows))
        chosen, rejected = preference_embeddings(
            lm,
            select_on,
            swept_layers,
            swept_poolings,
            template=kind,
            max_length=settings.max_length,
            encoding=encoding,
        )
        selection.update(
            by="preferences",
            **select_on_preferences(
                result, embeddings, chosen, rejected, dev_fraction=settings.dev_fraction, seed=settings.seed
            ),
        )
    elif layer is None:
        swept = sorted({row.layer for row in result.rows})
        choice = stable_band_choice(
            embeddings.harmless,
            embeddings.harmful,
            num_layers=lm.num_layers,
            pooling=poolings[0],
            layers=swept,
            groups=groups,
            seed=settings.seed,
        )
        selection.update(rule=STABLE_RULE, **choice.to_dict())
        warnings += choice.stability["warnings"]
        result.best = result.row(choice.centre, poolings[0], estimators[0])
    else:
        selection.update(rule="the given layer")
        result.best = result.rows[0]
    repeated = repeated_answers_warning([p.harmless for p in pairs], [p.harmful for p in pairs])
    if repeated:
        warnings.append(repeated)
    best = result.best
    key = (best.layer, best.pooling)
    vector = ESTIMATORS[best.estimator](embeddings.harmless[key], embeddings.harmful[key])
    heldout = {
        "test_fraction": settings.test_fraction,
        "seed": settings.seed,
        "n_train": result.n_train,
        "n_test": result.n_validation,
        **{k: v for k, v in best.to_dict().items() if k in ("accuracy", "auc", "effect_size")},
    }
    selection["chosen"] = {"layer": best.layer, "pooling": best.pooling, "estimator": best.estimator}
    return Direction.for_model(
        lm,
        vector,
        layer=best.layer,
        pooling=best.pooling,
        template=kind,
        max_length=settings.max_length,
        estimator=best.estimator,
        name=settings.name,
        n_pairs=len(pairs),
        heldout=heldout,
        extra={
            "n_truncated_texts": embeddings.n_truncated,
            "sweep": result.table(),
            "selection": selection,
            "settings": settings.to_dict(),
            "warnings": warnings,
        },
    )


# ---------------------------------------------------------------- saturation

# Held-out separation at or above these is saturated: telling the contrast pairs apart is easy (e.g.
# one refusal string vs anything), which says nothing about margins on real preference data.
SATURATED_ACCURACY = 0.99
SATURATED_AUC = 0.999


def saturation_warning(heldout: dict[str, Any]) -> str | None:
    """A warning when held-out separation saturates (accuracy >= 0.99 or AUC >= 0.999), else None.

    >>> saturation_warning({"accuracy": 1.0, "auc": 1.0, "n_test": 13}) is not None
    True
    >>> saturation_warning({"accuracy": 0.9, "auc": 0.95}) is None
    True
    """
    accuracy, auc_value = heldout.get("accuracy"), heldout.get("auc")
    saturated = (accuracy is not None and accuracy >= SATURATED_ACCURACY) or (
        auc_value is not None and auc_value >= SATURATED_AUC
    )
    if not saturated:
        return None
    return (
        f"held-out separation saturates (accuracy {_show(accuracy)}, AUC {_show(auc_value)} on "
        f"{heldout.get('n_test', '?')} pairs): telling these contrast pairs apart is easy, and it is NOT evidence "
        "that the margins mean anything on preference data; check agreement with labels against the random "
        "floor (legend evaluate --direction)"
    )


def _show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
