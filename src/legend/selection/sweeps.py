"""The sweep: every candidate layer × pooling × estimator fitted on a train split and scored on held-out pairs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..data import ContrastPair
from ..directions import (
    ESTIMATORS,
    ContrastEmbeddings,
    embed_contrast_pairs,
    split_indices,
)
from ..encoding import POOLINGS, EncodeConfig, Encoder, resolve_layer, template_kind
from ..metrics import auc, effect_size, pair_accuracy
from ..models import LoadedModel

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
        -POOLINGS.order(row.pooling),
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


def all_candidates(layers: Sequence[int], poolings: Sequence[str], estimators: Sequence[str]) -> list[Candidate]:
    return [
        Candidate(layer, pooling, estimator) for layer in layers for pooling in poolings for estimator in estimators
    ]


def sweep(
    lm: Encoder | LoadedModel,
    pairs: Sequence[ContrastPair],
    *,
    layers: Sequence[int] | None = None,
    layer_stride: int = 1,
    poolings: Sequence[str] = POOLINGS.choices(),
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


def _finite(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def _none_if_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
