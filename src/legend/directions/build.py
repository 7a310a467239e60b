"""Building a direction from contrast pairs: its settings, the contrast embeddings, the fit and held-out check."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..data import ContrastPair
from ..encoding import (
    POOLINGS,
    EncodeConfig,
    Encoder,
    check_max_length,
    encode,
    question_items,
    resolve_layer,
    template_kind,
)
from ..metrics import auc, pair_accuracy
from ..models import LoadedModel
from .artifact import Direction
from .estimators import ESTIMATORS, split_indices

SELECT_MODES = ("none", "auto")


@dataclass(frozen=True)
class DirectionSettings:
    """How a direction is built (`legend direction`). Validated once; saved in the artifact's config.json.

    `layer`/`pooling`/`estimator` left None take the paper's defaults (last layer, last token, mean
    difference) when `select` is "none"; with `select="auto"` (or a `select_on` preference file) the
    ones left None are chosen by the sweep and the ones given are fixed. How texts are rendered and
    batched (template, max length, batch sizes) is `encoding`'s, declared once there.

    >>> DirectionSettings(layer=12, pooling="mean").text_settings()
    {'template': 'auto', 'max_length': 2048}
    """

    layer: int | None = None
    pooling: str | None = None
    estimator: str | None = None
    select: str = "none"
    layer_stride: int = 1
    dev_fraction: float = 0.5
    test_fraction: float = 0.2
    seed: int = 0
    name: str = "safety"
    encoding: EncodeConfig = field(default_factory=EncodeConfig)  # template, max length, batching, progress
    recipe: str | None = None  # the named recipe these settings came from (legend.selection.recipe_settings)

    def __post_init__(self) -> None:
        if self.select not in SELECT_MODES:
            raise ValueError(f"--select: expected 'auto' or 'none', got {self.select!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {', '.join(POOLINGS)}")
        if self.estimator is not None and self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if self.encoding.template not in ("auto", "chat", "plain"):
            raise ValueError(f"unknown template {self.encoding.template!r}; choose from auto, chat, plain")
        if self.layer_stride < 1:
            raise ValueError("layer_stride must be at least 1")
        if not 0 < self.dev_fraction < 1:
            raise ValueError("dev_fraction must be between 0 and 1")
        if not 0 <= self.test_fraction < 1:
            raise ValueError("test_fraction must be in [0, 1)")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"direction name {self.name!r}: use letters, digits, '-' and '_' (it names columns)")

    @property
    def selecting(self) -> bool:
        return self.select == "auto"

    @property
    def template(self) -> str:
        """The text template asked for (`encoding.template`)."""
        return self.encoding.template

    @property
    def max_length(self) -> int:
        """The longest text in tokens (`encoding.max_length`, default 2048)."""
        return self.encoding.length_limit

    def text_settings(self) -> dict[str, Any]:
        """The encoding settings that change the direction's numbers (saved with it; batching is not)."""
        return {"template": self.template, "max_length": self.max_length}

    def with_paper_defaults(self) -> DirectionSettings:
        """Unset layer/pooling/estimator filled with the paper's choice (-1, last token, mean difference)."""
        return dataclasses.replace(
            self,
            layer=-1 if self.layer is None else self.layer,
            pooling=self.pooling or "last",
            estimator=self.estimator or "mean_difference",
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved in config.json (`settings`); batching is left out (it changes no number)."""
        return {**{k: v for k, v in asdict(self).items() if k != "encoding"}, **self.text_settings()}


# ---------------------------------------------------------------- building


@dataclass
class ContrastEmbeddings:
    """Embeddings of each pair's harmless and harmful answer, keyed by (layer, pooling)."""

    harmless: dict[tuple[int, str], torch.Tensor]
    harmful: dict[tuple[int, str], torch.Tensor]
    n_truncated: int


def embed_contrast_pairs(
    lm: Encoder | LoadedModel, pairs: Sequence[ContrastPair], config: EncodeConfig
) -> ContrastEmbeddings:
    """One encoding pass over both answers of every pair, for all layers/poolings in `config`."""
    questions = [p.question for p in pairs]
    items = question_items(questions, [p.harmless for p in pairs]) + question_items(
        questions, [p.harmful for p in pairs]
    )
    encoded = encode(lm, items, config)
    n = len(pairs)
    return ContrastEmbeddings(
        harmless={k: v[:n] for k, v in encoded.vectors.items()},
        harmful={k: v[n:] for k, v in encoded.vectors.items()},
        n_truncated=encoded.n_truncated,
    )


def fit_direction_vector(
    harmless: torch.Tensor,
    harmful: torch.Tensor,
    estimator: str = "mean_difference",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit on a train split to measure held-out separation, then refit on all pairs."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    fit = ESTIMATORS[estimator]
    train, test = split_indices(len(harmless), test_fraction, seed)
    heldout: dict[str, Any] = {"test_fraction": test_fraction, "seed": seed, "n_train": len(train), "n_test": len(test)}
    if len(test) and len(train):
        vector = fit(harmless[train], harmful[train])
        heldout["accuracy"] = pair_accuracy(harmless[test], harmful[test], vector)
        heldout["auc"] = auc(harmless[test], harmful[test], vector)
    return fit(harmless, harmful), heldout


def build_direction(
    lm: Encoder | LoadedModel, pairs: Sequence[ContrastPair], settings: DirectionSettings | None = None, **fields: Any
) -> Direction:
    """Build a concept direction from contrast pairs (question, harmful answer, harmless answer).

    `settings` (default DirectionSettings(); `fields` replace some of its fields) fixes the layer,
    pooling and estimator (unset ones take the paper's defaults). Both answers are embedded as
    `question ⊕ answer` with the same formatting annotation uses; the held-out separation
    accuracy/AUC is measured on a `test_fraction` split before refitting on all pairs.
    """
    settings = dataclasses.replace(settings or DirectionSettings(), **fields).with_paper_defaults()
    assert settings.layer is not None and settings.pooling is not None and settings.estimator is not None
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 contrast pairs to build a direction, got {len(pairs)}")
    kind = template_kind(lm.tokenizer, settings.template)
    check_max_length(lm.tokenizer, kind, settings.max_length, "max_length")
    config = dataclasses.replace(
        settings.encoding,
        layers=(settings.layer,),
        poolings=(settings.pooling,),
        template=kind,
        max_length=settings.max_length,
        description="direction",
    )
    embedded = embed_contrast_pairs(lm, pairs, config)
    key = (settings.layer, settings.pooling)
    vector, heldout = fit_direction_vector(
        embedded.harmless[key], embedded.harmful[key], settings.estimator, settings.test_fraction, settings.seed
    )
    return Direction.for_model(
        lm,
        vector,
        layer=resolve_layer(settings.layer, lm.num_layers),
        pooling=settings.pooling,
        template=kind,
        max_length=settings.max_length,
        estimator=settings.estimator,
        name=settings.name,
        n_pairs=len(pairs),
        heldout=heldout,
        extra={"n_truncated_texts": embedded.n_truncated, "settings": settings.to_dict()},
    )
