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
from .band import BAND_RULE, BAND_WIDTH, band_choice
from .preferences import preference_embeddings, select_on_preferences
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
    """Sweep (or fix, where `settings` gives them) layer, pooling and estimator; return the chosen direction.

    The contrast choice is BAND_RULE on the held-out rows (cross-source validation when `groups`,
    the source of each pair, has two or more values; else a seeded random split).

    The direction is refitted on all pairs. `select_on` (labelled preference pairs, chosen = safer)
    switches the choice from contrast-pair separation to agreement with those labels on a dev split.
    The direction's `heldout` is the winner's contrast validation result; `extra["sweep"]` is the
    whole table, `extra["selection"]` the rule, split and choice, `extra["settings"]` the settings.
    """
    settings = dataclasses.replace(settings or DirectionSettings(select="auto"), **fields)
    layer, pooling, estimator = settings.layer, settings.pooling, settings.estimator
    kind = template_kind(lm.tokenizer, settings.template)
    encoding = settings.encoding
    result, embeddings = sweep(
        lm,
        pairs,
        layers=None if layer is None else (layer,),
        layer_stride=settings.layer_stride,
        poolings=POOLINGS.choices() if pooling is None else (pooling,),
        estimators=tuple(ESTIMATORS) if estimator is None else (estimator,),
        template=kind,
        max_length=settings.max_length,
        encoding=encoding,
        test_fraction=settings.test_fraction,
        seed=settings.seed,
        groups=groups,
    )
    result.best = band_choice(result.rows, result.n_validation, num_layers=lm.num_layers)
    selection: dict[str, Any] = {
        "by": "contrast",
        "rule": BAND_RULE,
        "validation": result.extra.get("validation"),
        "band_width": BAND_WIDTH,
        "fixed": {k: v for k, v in (("layer", layer), ("pooling", pooling), ("estimator", estimator)) if v is not None},
    }
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
