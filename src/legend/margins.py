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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError, PairView
from .directions import Direction
from .encoding import EncodeConfig, Encoder, TemplateError, as_encoder
from .metrics import project
from .models import LoadedModel

DEFAULT_LEVELS = 4


@dataclass
class Binning:
    """Edges e0=0 < e1 < ... < e_{K-2} and one value per level; level = number of edges below raw.

    >>> binning = Binning.fit([-1.0, 0.5, 1.0, 2.0, 3.0], levels=3)
    >>> binning.edges, binning.apply([-1.0, 0.5, 3.0]).tolist()
    ([0.0, 1.5], [0.0, 1.0, 2.0])
    """

    edges: list[float]
    values: list[float]
    source: str | None = field(default=None, compare=False)
    """The file the edges were loaded from (None when fitted or built in code)."""

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        if not self.values:
            raise ValueError(f"{where}a binning needs at least one level value")
        if len(self.edges) != len(self.values) - 1:
            raise ValueError(
                f"{where}{len(self.edges)} bin edges for {len(self.values)} levels: expected {len(self.values) - 1}"
            )
        if not all(np.isfinite(self.edges)) or not all(np.isfinite(self.values)):
            raise ValueError(f"{where}bin edges and level values must be finite numbers")
        if any(b < a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"{where}bin edges must not decrease: {self.edges}")
        if any(b < a for a, b in zip(self.values, self.values[1:])):
            raise ValueError(f"{where}level values must not decrease (level 0 holds raw <= 0): {self.values}")

    @property
    def levels(self) -> int:
        return len(self.values)

    @classmethod
    def fit(
        cls, raw: Sequence[float] | np.ndarray, levels: int = DEFAULT_LEVELS, values: Sequence[float] | None = None
    ) -> Binning:
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
        return np.searchsorted(np.asarray(self.edges, dtype=np.float64), np.asarray(raw, dtype=np.float64), side="left")

    def apply(self, raw: Sequence[float] | np.ndarray) -> np.ndarray:
        """The level value of each raw margin; a NaN or infinite raw margin is a ValueError naming its position.

        >>> Binning([0.0, 1.0], [0, 1, 2]).apply([-1.0, 0.5, 3.0]).tolist()
        [0.0, 1.0, 2.0]
        """
        raw = np.asarray(raw, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(raw))
        if bad.size:
            raise ValueError(f"raw margin {int(bad[0]) + 1} of {raw.size} is {raw.flat[bad[0]]}: it has no level")
        return np.asarray(self.values, dtype=np.float64)[self.level(raw)]

    def to_dict(self) -> dict[str, Any]:
        return {"levels": self.levels, "edges": list(self.edges), "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Binning:
        """A binning from its `to_dict` form; a missing or non-numeric field is a ValueError naming `source`."""
        where = f"{source}: " if source else ""
        if not isinstance(data, dict) or "edges" not in data or "values" not in data:
            raise ValueError(
                f"{where}not a legend sidecar or binning: expected a JSON object with 'binning' (or 'edges' and "
                "'values')"
            )
        try:
            edges, values = [float(e) for e in data["edges"]], [float(v) for v in data["values"]]
        except (TypeError, ValueError):
            raise ValueError(f"{where}'edges' and 'values' must be lists of numbers") from None
        return cls(edges=edges, values=values, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Binning:
        """Read the edges from a sidecar written by `legend annotate` (or a bare binning JSON).

        Every problem (missing, unreadable, not JSON, not a binning) is a one-line error naming the file.
        """
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"{name}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}: cannot read ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict) and "binning" in data:
            data = data["binning"]
        return cls.from_dict(data, source=name)


@dataclass
class MarginResult:
    """Raw margins of a list of pairs, with what the summary reports."""

    raw: np.ndarray
    n_identical: int
    n_truncated_texts: int
    n_tokens: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    # e(prompt+chosen) − e(prompt+rejected) per pair (float32, zero rows for identical pairs), kept on
    # request for the random-direction floor (legend.quality.random_floor); None otherwise.
    differences: np.ndarray | None = None
    # Those differences projected on given random unit directions (n_pairs × k, float64): the null's
    # margins, computed in the same pass so the floor needs neither the differences nor a second pass.
    random_margins: np.ndarray | None = None
    # Pairs whose chosen or rejected text lost most of its answer to truncation (`TokenizedText.answer_cut`).
    n_answer_truncated: int = 0


def compute_margins(
    encoder: Encoder | LoadedModel,
    views: Sequence[PairView],
    direction: Direction,
    encoding: EncodeConfig | None = None,
) -> MarginResult:
    """Raw margins of every pair for one direction (see `compute_margins_multi`).

    Args:
        encoder: an Encoder, or a loaded model (wrapped in the default encoder).
        views: the pairs' texts.
        direction: the direction to project on.
        encoding: batching and prefix-sharing settings (layer, pooling and template are the direction's).

    Returns:
        A `MarginResult` whose `raw[i]` is (e(prompt+chosen) − e(prompt+rejected)) · direction of pair i.

    >>> import legend
    >>> lm = legend.tiny_model()
    >>> direction = legend.build_direction(lm, [legend.ContrastPair("Q?", "Sure.", "No.")] * 4, recipe="paper")
    >>> same = PairView(prompt=(), chosen="No.", rejected="No.")
    >>> compute_margins(lm, [same], direction).raw.tolist()  # identical answers: exactly 0
    [0.0]
    """
    return compute_margins_multi(encoder, views, [direction], encoding)[0]


def describe(raw: np.ndarray, binned: np.ndarray | None = None) -> dict[str, Any]:
    """Distribution summary of raw margins (and level counts of binned ones)."""
    raw = np.asarray(raw, dtype=np.float64)
    summary: dict[str, Any] = {"n": int(raw.size)}
    if raw.size:
        q = np.quantile(raw, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
        summary.update(
            mean=float(raw.mean()),
            std=float(raw.std()),
            min=float(q[0]),
            p10=float(q[1]),
            p25=float(q[2]),
            median=float(q[3]),
            p75=float(q[4]),
            p90=float(q[5]),
            max=float(q[6]),
            share_positive=float((raw > 0).mean()),
            share_zero=float((raw == 0).mean()),
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
        for attribute in ("fingerprint", "hidden_size", "template", "max_length", "tokenizer_fingerprint"):
            if attribute == "tokenizer_fingerprint" and None in (
                first.tokenizer_fingerprint,
                other.tokenizer_fingerprint,
            ):
                continue  # an older direction records none
            if getattr(other, attribute) != getattr(first, attribute):
                raise ValueError(
                    f"directions {first.name!r} and {other.name!r} differ in {attribute} "
                    f"({getattr(first, attribute)!r} vs {getattr(other, attribute)!r}): they cannot share one "
                    f"encoding pass"
                )


def compute_margins_multi(
    encoder: Encoder | LoadedModel,
    views: Sequence[PairView],
    directions: Sequence[Direction],
    encoding: EncodeConfig | None = None,
    *,
    keep_differences: bool = False,
    random_directions: np.ndarray | None = None,
) -> list[MarginResult]:
    """Raw margins of every pair for each direction, from ONE encoding pass.

    `encoding` holds the batching and prefix-sharing settings (and a `max_length` overriding the
    direction's); the layers, poolings and template are the directions'. The pass captures the union
    of the directions' layers and poolings; each direction then projects its own (layer, pooling).
    Pairs whose chosen and rejected are identical get exactly 0. Returns one MarginResult per
    direction, in order; with `keep_differences` each also holds the pairs' embedding differences at
    its own layer and pooling (`differences`), so random directions can be scored without encoding again.
    `encoder` is any `legend.encoding.Encoder` (a loaded transformers model is wrapped in the default one).
    With `random_directions` (hidden × k unit columns, `legend.metrics.random_unit_directions`) each result
    also holds the pairs' margins on those directions (`random_margins`), for the random floor.
    """
    encoder = as_encoder(encoder)
    check_directions_agree(directions)
    for direction in directions:
        direction.check_compatible(encoder)
    start = time.perf_counter()
    identical = np.array([v.chosen == v.rejected for v in views], dtype=bool)
    todo = np.flatnonzero(~identical).tolist()
    items = [(views[i].prompt, views[i].chosen) for i in todo] + [(views[i].prompt, views[i].rejected) for i in todo]
    config = directions[0].encode_config(
        encoding,
        layers=tuple(dict.fromkeys(d.layer for d in directions)),
        poolings=tuple(dict.fromkeys(d.pooling for d in directions)),
        description="annotate",
    )
    raws = [np.zeros(len(views), dtype=np.float64) for _ in directions]
    diffs = [
        np.zeros((len(views), encoder.hidden_size), dtype=np.float32) if keep_differences else None for _ in directions
    ]
    randoms = [
        None if random_directions is None else np.zeros((len(views), random_directions.shape[1])) for _ in directions
    ]
    n_truncated = n_tokens = n_forward = n_cut = 0
    if len(todo):
        try:
            encoded = encoder.encode(items, config)
        except TemplateError as err:
            if err.item is None:
                raise
            side = "chosen" if err.item < len(todo) else "rejected"
            raise DataError(f"{err} (its {side} answer)", row=todo[err.item % len(todo)] + 1) from None
        if encoded.answer_cut:
            cut = np.array(encoded.answer_cut, dtype=bool)
            n_cut = int((cut[: len(todo)] | cut[len(todo) :]).sum())
        for raw, direction in zip(raws, directions):
            vectors = encoded.get(direction.layer, direction.pooling)
            raw[todo] = project(vectors[: len(todo)], vectors[len(todo) :], direction.vector)
        for diff, random, direction in zip(diffs, randoms, directions):
            if diff is None and random is None:
                continue
            vectors = encoded.get(direction.layer, direction.pooling)
            difference = (vectors[: len(todo)] - vectors[len(todo) :]).float().numpy()
            if diff is not None:
                diff[todo] = difference
            if random is not None:
                assert random_directions is not None
                random[todo] = difference.astype(np.float64) @ random_directions
        n_truncated, n_tokens, n_forward = encoded.n_truncated, encoded.n_tokens, encoded.n_forward_tokens
    seconds = time.perf_counter() - start
    return [
        MarginResult(
            raw=raw,
            n_identical=int(identical.sum()),
            n_truncated_texts=n_truncated,
            n_tokens=n_tokens,
            seconds=seconds,
            extra={
                "direction": d.name,
                "shared_pass": len(directions),
                "forward_tokens": n_forward,
                "encoder": encoder.name,
            },
            differences=diff,
            random_margins=random,
            n_answer_truncated=n_cut,
        )
        for raw, d, diff, random in zip(raws, directions, diffs, randoms)
    ]
