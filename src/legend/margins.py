"""Margins: project pairs onto a direction, and bin raw margins into a few discrete levels.

margin_raw = (e(prompt ⊕ chosen) − e(prompt ⊕ rejected)) · direction   (positive: chosen is safer)

Binning (as Llama 2 does with its preference ratings): raw ≤ 0 goes to the lowest level; the
positive raw margins are split into K − 1 equally filled groups by their quantiles. The edges are
fitted once (e.g. on the training set) and can be saved and re-applied, so train and test share them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import PairView
from .directions import Direction
from .encoding import encode
from .models import LoadedModel

DEFAULT_LEVELS = 4


@dataclass
class Binning:
    """Edges e0=0 < e1 < ... < e_{K-2} and one value per level; level = number of edges below raw."""

    edges: list[float]
    values: list[float]

    @property
    def levels(self) -> int:
        return len(self.values)

    @classmethod
    def fit(cls, raw: Sequence[float] | np.ndarray, levels: int = DEFAULT_LEVELS,
            values: Sequence[float] | None = None) -> "Binning":
        """Fit edges on raw margins: 0, then quantiles splitting the positive margins into levels−1 groups."""
        if levels < 1:
            raise ValueError("levels must be at least 1")
        values = list(range(levels)) if values is None else [float(v) for v in values]
        if len(values) != levels:
            raise ValueError(f"{len(values)} level values given for {levels} levels")
        if levels == 1:
            return cls(edges=[], values=values)
        raw = np.asarray(raw, dtype=np.float64)
        positive = raw[np.isfinite(raw) & (raw > 0)]
        quantiles = np.arange(1, levels - 1) / (levels - 1)
        inner = np.quantile(positive, quantiles).tolist() if len(positive) else [0.0] * len(quantiles)
        return cls(edges=[0.0] + [float(e) for e in inner], values=values)

    def level(self, raw: Sequence[float] | np.ndarray) -> np.ndarray:
        """Level index (0..K-1) of each raw margin."""
        return np.searchsorted(np.asarray(self.edges, dtype=np.float64), np.asarray(raw, dtype=np.float64),
                               side="left")

    def apply(self, raw: Sequence[float] | np.ndarray) -> np.ndarray:
        """The level value of each raw margin."""
        return np.asarray(self.values, dtype=np.float64)[self.level(raw)]

    def to_dict(self) -> dict[str, Any]:
        return {"levels": self.levels, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Binning":
        return cls(edges=[float(e) for e in data["edges"]], values=[float(v) for v in data["values"]])

    @classmethod
    def load(cls, path: str | Path) -> "Binning":
        """Read the edges from a sidecar written by `legend annotate` (or a bare binning JSON)."""
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data.get("binning", data))


def project(chosen: torch.Tensor, rejected: torch.Tensor, direction: torch.Tensor) -> np.ndarray:
    """(chosen − rejected) · direction in float64, one number per pair."""
    return ((chosen.double() - rejected.double()) @ direction.double()).numpy()


@dataclass
class MarginResult:
    """Raw margins of a list of pairs, with what the summary reports."""

    raw: np.ndarray
    n_identical: int
    n_truncated_texts: int
    n_tokens: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def compute_margins(
    lm: LoadedModel,
    views: Sequence[PairView],
    direction: Direction,
    *,
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
    max_length: int | None = None,
    progress: bool = False,
    prefix_sharing: bool = True,
    sharing_method: str = "auto",
) -> MarginResult:
    """Raw margins of every pair. Pairs whose chosen and rejected are identical get exactly 0.

    With `prefix_sharing` each pair's prompt is run once for both answers (same margins, less work),
    by `sharing_method` "auto", "packed" or "cache" (see `EncodeConfig.sharing_method`).
    """
    return compute_margins_multi(lm, views, [direction], batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                 max_length=max_length, progress=progress, prefix_sharing=prefix_sharing,
                                 sharing_method=sharing_method)[0]


def describe(raw: np.ndarray, binned: np.ndarray | None = None) -> dict[str, Any]:
    """Distribution summary of raw margins (and level counts of binned ones)."""
    raw = np.asarray(raw, dtype=np.float64)
    summary: dict[str, Any] = {"n": int(raw.size)}
    if raw.size:
        q = np.quantile(raw, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
        summary.update(
            mean=float(raw.mean()), std=float(raw.std()), min=float(q[0]), p10=float(q[1]), p25=float(q[2]),
            median=float(q[3]), p75=float(q[4]), p90=float(q[5]), max=float(q[6]),
            share_positive=float((raw > 0).mean()), share_zero=float((raw == 0).mean()),
        )
    if binned is not None:
        values, counts = np.unique(np.asarray(binned), return_counts=True)
        summary["level_counts"] = {f"{v:g}": int(c) for v, c in zip(values, counts)}
    return summary


# ---------------------------------------------------------------- several directions in one pass

def check_directions_agree(directions: Sequence[Direction]) -> None:
    """Directions applied in one pass must share the model and the text formatting; names must differ."""
    if not directions:
        raise ValueError("no direction given")
    first = directions[0]
    names = [d.name for d in directions]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ValueError(f"two directions are named {duplicate!r}: rebuild one with another --name")
    for other in directions[1:]:
        for attribute in ("fingerprint", "hidden_size", "template", "max_length"):
            if getattr(other, attribute) != getattr(first, attribute):
                raise ValueError(
                    f"directions {first.name!r} and {other.name!r} differ in {attribute} "
                    f"({getattr(first, attribute)!r} vs {getattr(other, attribute)!r}): they cannot share one encoding pass")


def compute_margins_multi(
    lm: LoadedModel,
    views: Sequence[PairView],
    directions: Sequence[Direction],
    *,
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
    max_length: int | None = None,
    progress: bool = False,
    prefix_sharing: bool = True,
    sharing_method: str = "auto",
) -> list[MarginResult]:
    """Raw margins of every pair for each direction, from ONE encoding pass.

    The pass captures the union of the directions' layers and poolings; each direction then projects
    its own (layer, pooling). Returns one MarginResult per direction, in order (identical pairs get 0).
    """
    check_directions_agree(directions)
    for direction in directions:
        direction.check_compatible(lm)
    start = time.perf_counter()
    identical = np.array([v.chosen == v.rejected for v in views], dtype=bool)
    todo = np.flatnonzero(~identical)
    items = [(views[i].prompt, views[i].chosen) for i in todo] + [(views[i].prompt, views[i].rejected) for i in todo]
    config = directions[0].encode_config(
        layers=tuple(dict.fromkeys(d.layer for d in directions)),
        poolings=tuple(dict.fromkeys(d.pooling for d in directions)),
        batch_size=batch_size, max_batch_tokens=max_batch_tokens, progress=progress, description="annotate",
        prefix_sharing=prefix_sharing, sharing_method=sharing_method,
        **({"max_length": max_length} if max_length else {}))
    raws = [np.zeros(len(views), dtype=np.float64) for _ in directions]
    n_truncated = n_tokens = n_forward = 0
    if len(todo):
        encoded = encode(lm, items, config)
        for raw, direction in zip(raws, directions):
            vectors = encoded.get(direction.layer, direction.pooling)
            raw[todo] = project(vectors[: len(todo)], vectors[len(todo):], direction.vector)
        n_truncated, n_tokens, n_forward = encoded.n_truncated, encoded.n_tokens, encoded.n_forward_tokens
    seconds = time.perf_counter() - start
    return [MarginResult(raw=raw, n_identical=int(identical.sum()), n_truncated_texts=n_truncated, n_tokens=n_tokens,
                         seconds=seconds, extra={"direction": d.name, "shared_pass": len(directions), "forward_tokens": n_forward})
            for raw, d in zip(raws, directions)]
