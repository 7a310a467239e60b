"""Choose the layer, pooling and estimator of a direction with evidence, and keep the evidence.

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

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .data import ContrastPair, PairView, read_contrast_pairs
from .directions import (
    ESTIMATORS,
    ContrastEmbeddings,
    Direction,
    DirectionSettings,
    build_direction,
    embed_contrast_pairs,
    split_indices,
)
from .encoding import POOLINGS, EncodeConfig, encode, resolve_layer, template_kind
from .metrics import auc, effect_size, pair_accuracy, project, symmetric_auc
from .models import LoadedModel
from .resources import XSTEST_PAIRS, sample_path

SELECTION_RULE = (
    "held-out pair accuracy, then held-out AUC, then held-out effect size "
    "(mean/std of projected paired differences), then mean_difference > pca > logistic, "
    "last > mean pooling, deeper layer"
)
PREFERENCE_RULE = (
    "dev share of positive margins (chosen projects higher), then dev symmetric AUC of the "
    "margins, then the contrast-pair rule"
)
_ESTIMATOR_ORDER = ("mean_difference", "pca", "logistic")


@dataclass(frozen=True)
class Candidate:
    """One configuration of the sweep."""

    layer: int  # resolved, 0..num_layers
    pooling: str
    estimator: str


@dataclass
class SweepRow:
    """Held-out separation of one candidate on the contrast pairs (NaN when it could not be fitted)."""

    layer: int
    pooling: str
    estimator: str
    accuracy: float
    auc: float
    effect_size: float
    error: str | None = None
    # Filled by select_on_preferences: agreement with the labelled preference dev split.
    dev_share_positive: float | None = None
    dev_auc: float | None = None

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.layer, self.pooling, self.estimator)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # JSON has no NaN/Infinity: undefined or unbounded values are written as null.
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in data.items()
            if v is not None or k in ("accuracy", "auc", "effect_size")
        }


@dataclass
class SweepResult:
    """Every candidate's held-out separation, the split used, and the best row by `SELECTION_RULE`."""

    rows: list[SweepRow]
    best: SweepRow
    n_train: int
    n_validation: int
    test_fraction: float
    seed: int
    rule: str = SELECTION_RULE
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        return [row.to_dict() for row in self.rows]

    def row(self, layer: int, pooling: str, estimator: str) -> SweepRow:
        for row in self.rows:
            if (row.layer, row.pooling, row.estimator) == (layer, pooling, estimator):
                return row
        raise KeyError((layer, pooling, estimator))


# ---------------------------------------------------------------- candidates


def candidate_layers(num_layers: int, layer_stride: int = 1, layers: Sequence[int] | None = None) -> tuple[int, ...]:
    """Resolved layers to sweep: `layers` if given, else every `layer_stride`-th of 1..L ending at L.

    Layer 0 (the token embeddings) is left out of the default sweep: it has not read the context, and
    its last-token state is the same end-of-turn token for every answer.
    """
    if layers is not None:
        return tuple(dict.fromkeys(resolve_layer(layer, num_layers) for layer in layers))
    if layer_stride < 1:
        raise ValueError(f"layer stride must be at least 1, got {layer_stride}")
    return tuple(sorted(range(num_layers, 0, -layer_stride)))


def _check_choices(poolings: Sequence[str], estimators: Sequence[str]) -> None:
    for pooling in poolings:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
    for estimator in estimators:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    if not poolings or not estimators:
        raise ValueError("the sweep needs at least one pooling and one estimator")


# ---------------------------------------------------------------- the sweep on embeddings


def _rank_key(row: SweepRow) -> tuple:
    """Sort key: larger is better (see SELECTION_RULE); NaN ranks last."""

    def value(x: float | None) -> float:
        return -math.inf if x is None or math.isnan(x) else x

    return (
        value(row.accuracy),
        value(row.auc),
        value(row.effect_size),
        -_ESTIMATOR_ORDER.index(row.estimator) if row.estimator in _ESTIMATOR_ORDER else -99,
        -POOLINGS.index(row.pooling),
        row.layer,
    )


def best_row(rows: Sequence[SweepRow]) -> SweepRow:
    """The best row by SELECTION_RULE."""
    fitted = [row for row in rows if row.error is None]
    if not fitted:
        raise ValueError(f"no candidate could be fitted ({rows[0].error if rows else 'no candidates'})")
    return max(fitted, key=_rank_key)


def sweep_embeddings(
    embeddings: ContrastEmbeddings,
    candidates: Sequence[Candidate],
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> SweepResult:
    """Fit every candidate on the train split and score it on the validation split (no encoding).

    `groups` (one label per pair, e.g. the file each pair came from) with two or more distinct values
    switch to cross-source validation: for each source, fit on the OTHER sources and score on it;
    a row's metrics are the means over the held-out sources. A direction that only learned one
    source's style (e.g. a refusal template) then scores low.
    """
    n = len(next(iter(embeddings.harmless.values())))
    if n < 2:
        raise ValueError(f"need at least 2 contrast pairs to sweep, got {n}")
    labels = None if groups is None else np.asarray(groups)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} group labels for {n} pairs")
    if labels is not None and len(set(labels.tolist())) >= 2:
        folds = [(np.flatnonzero(labels != g), np.flatnonzero(labels == g)) for g in dict.fromkeys(labels.tolist())]
        n_train, n_validation = n, n
        extra: dict[str, Any] = {
            "validation": "cross-source",
            "sources": [str(g) for g in dict.fromkeys(labels.tolist())],
        }
    else:
        train, validation = split_indices(n, test_fraction, seed)
        if not len(validation):
            raise ValueError("the sweep needs held-out pairs: use a test fraction above 0")
        folds = [(train, validation)]
        n_train, n_validation = len(train), len(validation)
        extra = {"validation": "random split"}
    rows = []
    for cand in candidates:
        harmless, harmful = (
            embeddings.harmless[(cand.layer, cand.pooling)],
            embeddings.harmful[(cand.layer, cand.pooling)],
        )
        scores = []
        try:
            for train, validation in folds:
                vector = ESTIMATORS[cand.estimator](harmless[train], harmful[train])
                hv, hf = harmless[validation], harmful[validation]
                scores.append((pair_accuracy(hv, hf, vector), auc(hv, hf, vector), effect_size(hv, hf, vector)))
        except ValueError as err:  # e.g. a zero difference: this candidate cannot separate anything
            rows.append(SweepRow(cand.layer, cand.pooling, cand.estimator, math.nan, math.nan, math.nan, str(err)))
            continue
        mean = np.mean(np.array(scores, dtype=np.float64), axis=0)
        rows.append(SweepRow(cand.layer, cand.pooling, cand.estimator, float(mean[0]), float(mean[1]), float(mean[2])))
    return SweepResult(
        rows=rows,
        best=best_row(rows),
        n_train=n_train,
        n_validation=n_validation,
        test_fraction=test_fraction,
        seed=seed,
        extra=extra,
    )


# ---------------------------------------------------------------- the band rule

BAND_WIDTH = 2  # layers on each side: the band L-2..L+2
# Band centres come from the upper part of the network: early layers mostly encode the tokens
# themselves (a refusal's wording is trivially separable there) rather than what the answer does;
# representation-engineering work finds concept directions in the middle-to-late layers.
BAND_MIN_DEPTH = 0.5
BAND_RULE = (
    "among layers L >= 0.5 x depth with the full band L-2..L+2 swept: mean held-out effect size over the band "
    "(same pooling and estimator), then the layer's own effect size, then last before mean, then the deeper layer; "
    "mean_difference unless another estimator's band score is higher by more than 2 standard errors"
)


def band_scores(rows: Sequence[SweepRow], width: int = BAND_WIDTH) -> dict[Candidate, float]:
    """For each candidate, the mean held-out effect size of the same pooling/estimator over layers L-w..L+w.

    Only swept layers count; candidates that could not be fitted count as effect size 0 in their
    neighbours' bands (they separate nothing). A layer whose neighbours also separate well beats an
    isolated spike, which is more often noise of a small validation split.
    """
    table = {
        (r.layer, r.pooling, r.estimator): (0.0 if r.error or not math.isfinite(r.effect_size) else r.effect_size)
        for r in rows
    }
    out = {}
    for r in rows:
        if r.error is not None:
            continue
        band = [
            v
            for (layer, p, e), v in table.items()
            if p == r.pooling and e == r.estimator and abs(layer - r.layer) <= width
        ]
        out[r.candidate] = float(np.mean(band))
    return out


def band_choice(
    rows: Sequence[SweepRow],
    n_validation: int,
    width: int = BAND_WIDTH,
    *,
    num_layers: int | None = None,
    min_depth: float = BAND_MIN_DEPTH,
) -> SweepRow:
    """The row chosen by BAND_RULE (see docs/selection.md).

    Centres are layers >= `min_depth` x `num_layers` (default: the deepest swept layer) whose whole
    band was swept; where no layer qualifies (few layers swept), every fitted layer may be a centre.
    """
    scores = band_scores(rows, width)
    if not scores:
        raise ValueError(f"no candidate could be fitted ({rows[0].error if rows else 'no candidates'})")
    fitted = [r for r in rows if r.candidate in scores]
    depth = num_layers if num_layers is not None else max(r.layer for r in rows)
    swept = {r.layer for r in rows}

    def eligible(r: SweepRow) -> bool:
        full = all(layer in swept for layer in range(r.layer - width, r.layer + width + 1))
        return full and r.layer >= min_depth * depth

    pool = [r for r in fitted if eligible(r)] or fitted

    def key(r: SweepRow) -> tuple:
        return (scores[r.candidate], _finite(r.effect_size), -POOLINGS.index(r.pooling), r.layer)

    best = max(pool, key=key)
    default = [r for r in pool if r.estimator == "mean_difference"]
    if best.estimator == "mean_difference" or not default:
        return best
    best_md = max(default, key=key)
    d = scores[best_md.candidate]
    # standard error of an effect size (mean/std of n paired differences): sqrt((1 + d^2/2) / n)
    se = math.sqrt((1 + d * d / 2) / max(n_validation, 1))
    return best if scores[best.candidate] > d + 2 * se else best_md


def all_candidates(layers: Sequence[int], poolings: Sequence[str], estimators: Sequence[str]) -> list[Candidate]:
    return [
        Candidate(layer, pooling, estimator) for layer in layers for pooling in poolings for estimator in estimators
    ]


# ---------------------------------------------------------------- with a model


def sweep(
    lm: LoadedModel,
    pairs: Sequence[ContrastPair],
    *,
    layers: Sequence[int] | None = None,
    layer_stride: int = 1,
    poolings: Sequence[str] = POOLINGS,
    estimators: Sequence[str] = tuple(ESTIMATORS),
    template: str = "auto",
    max_length: int = 2048,
    encoding: EncodeConfig | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> tuple[SweepResult, ContrastEmbeddings]:
    """Sweep layers × poolings × estimators on the contrast pairs with ONE encoding pass.

    `groups` (the source of each pair) switch the validation to cross-source (see sweep_embeddings).

    Returns the result and the embeddings (keyed by resolved layer), so a caller can refit the
    winner on all pairs without encoding again.
    """
    _check_choices(poolings, estimators)
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 contrast pairs to sweep, got {len(pairs)}")
    swept_layers = candidate_layers(lm.num_layers, layer_stride, layers)
    config = dataclasses.replace(
        encoding or EncodeConfig(),
        layers=swept_layers,
        poolings=tuple(poolings),
        template=template_kind(lm.tokenizer, template),
        max_length=max_length,
        description="sweep",
    )
    embeddings = embed_contrast_pairs(lm, pairs, config)
    result = sweep_embeddings(
        embeddings,
        all_candidates(swept_layers, poolings, estimators),
        test_fraction=test_fraction,
        seed=seed,
        groups=groups,
    )
    return result, embeddings


def preference_embeddings(
    lm: LoadedModel,
    views: Sequence[PairView],
    layers: Sequence[int],
    poolings: Sequence[str],
    *,
    template: str,
    max_length: int,
    encoding: EncodeConfig | None = None,
) -> tuple[dict[tuple[int, str], torch.Tensor], dict[tuple[int, str], torch.Tensor]]:
    """Chosen and rejected embeddings of preference pairs for every layer/pooling, in ONE pass."""
    config = dataclasses.replace(
        encoding or EncodeConfig(),
        layers=tuple(layers),
        poolings=tuple(poolings),
        template=template,
        max_length=max_length,
        description="select-on",
    )
    items = [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views]
    encoded = encode(lm, items, config)
    n = len(views)
    return ({k: v[:n] for k, v in encoded.vectors.items()}, {k: v[n:] for k, v in encoded.vectors.items()})


def preference_agreement(margins: np.ndarray) -> tuple[float, float]:
    """(share of positive margins, symmetric AUC of the margins) on labelled pairs (chosen = safer)."""
    margins = np.asarray(margins, dtype=np.float64)
    return float((margins > 0).mean()), symmetric_auc(margins)


def select_on_preferences(
    result: SweepResult,
    embeddings: ContrastEmbeddings,
    chosen: dict[tuple[int, str], torch.Tensor],
    rejected: dict[tuple[int, str], torch.Tensor],
    *,
    dev_fraction: float = 0.5,
    seed: int = 0,
    fitted: dict[Candidate, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Pick the swept candidate whose margins agree best with preference labels on a dev split.

    Each candidate direction is fitted on ALL contrast pairs; margins (chosen − rejected)·v of the
    dev pairs are scored by share positive then symmetric AUC (PREFERENCE_RULE), and the winner
    alone is reported on the test pairs. Fills `dev_share_positive`/`dev_auc` of every row and
    sets `result.best` to the winner. Returns the selection record (split sizes, dev and test metrics).
    `fitted` (candidate -> vector fitted on all contrast pairs) is filled as a cache and reused if given.
    """
    n = len(next(iter(chosen.values())))
    if n < 2:
        raise ValueError(f"need at least 2 preference pairs to select on, got {n}")
    dev, test = split_indices(n, 1.0 - dev_fraction, seed)
    vectors = fitted if fitted is not None else {}
    for row in result.rows:
        if row.error is not None:
            continue
        key = (row.layer, row.pooling)
        try:
            vector = vectors.get(row.candidate)
            if vector is None:
                vector = vectors[row.candidate] = ESTIMATORS[row.estimator](
                    embeddings.harmless[key], embeddings.harmful[key]
                )
        except ValueError as err:
            row.error = str(err)
            continue
        margins = project(chosen[key][dev], rejected[key][dev], vector)
        row.dev_share_positive, row.dev_auc = preference_agreement(margins)
    scored = [row for row in result.rows if row.dev_share_positive is not None]
    if not scored:
        raise ValueError("no candidate could be fitted on the contrast pairs")
    winner = max(scored, key=lambda row: (_finite(row.dev_share_positive), _finite(row.dev_auc), _rank_key(row)))
    result.best = winner
    key = (winner.layer, winner.pooling)
    test_share, test_auc = (
        preference_agreement(project(chosen[key][test], rejected[key][test], vectors[winner.candidate]))
        if len(test)
        else (math.nan, math.nan)
    )
    return {
        "rule": PREFERENCE_RULE,
        "dev_fraction": dev_fraction,
        "seed": seed,
        "n_dev": len(dev),
        "n_test": len(test),
        "dev_share_positive": winner.dev_share_positive,
        "dev_auc": winner.dev_auc,
        "test_share_positive": _none_if_nan(test_share),
        "test_auc": _none_if_nan(test_auc),
        "test_rows": (test + 1).tolist(),
    }


def _finite(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def _none_if_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def select_direction(
    lm: LoadedModel,
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
        poolings=POOLINGS if pooling is None else (pooling,),
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
    lm: LoadedModel,
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
