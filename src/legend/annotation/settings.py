"""What an annotation run is: its settings, the directions it applies and the columns they fill."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import DEFAULT_CHUNK_ROWS, ColumnNames, DataError
from ..directions import Direction
from ..encoding import DEFAULT_ENCODER, ENCODERS, EncodeConfig, check_max_length
from ..margins import DEFAULT_LEVELS, Binning, check_directions_agree

MARGIN_COLUMNS = ("margin_raw", "margin")
# One direction (an object or its folder) or several, as `annotate` and the engines take them.
DirectionArg = Direction | str | os.PathLike[str] | Sequence[Direction | str | os.PathLike[str]]
BINNING_RULE = "raw <= 0 -> lowest level; positive raw margins split into levels-1 equal-count groups"
EVIDENCE_MODES = ("auto", "labelled", "off")


@dataclass(frozen=True)
class AnnotateSettings:
    """Options of `annotate`: binning, columns, chunking, and the encoding settings (batching, sharing).

    Created once at the edge (CLI or API call), validated here, passed down, and saved in the
    sidecar. `encoding.max_length` None means the direction's; its layers, poolings and template are
    always the direction's.
    """

    levels: int | None = None  # None: the binning's, else as many as level_values, else DEFAULT_LEVELS
    level_values: tuple[float, ...] | None = None  # None: the binning's, else 0..levels-1
    binning: Binning | None = None  # re-use edges from an earlier run instead of fitting
    columns: ColumnNames = field(default_factory=ColumnNames)
    chunk_rows: int = DEFAULT_CHUNK_ROWS  # the file engines stream the input in chunks of this many rows
    encoding: EncodeConfig = field(default_factory=EncodeConfig)
    encoder: str = DEFAULT_ENCODER  # how hidden states are computed: a name in legend.encoding.ENCODERS
    # Keep each pair's embedding difference (every direction's layer and pooling) in .legend/<out>.differences.*
    keep_differences: bool = False
    # Agreement with the labels against the random floor, from the same pass: "auto" where the layout says which
    # answer was preferred (hh, pku), "labelled" (the data's chosen is the preferred answer), or "off".
    evidence: str = "auto"
    random_directions: int = 200  # the floor's random unit directions (seeded by `seed`)
    seed: int = 0  # of the random directions and the bootstrap intervals
    # An input column named like one legend writes (margin_raw, margin, margin_raw_<name>, ...) is an error unless
    # this is set; then its values are replaced where the column stands (the column order is kept).
    overwrite_margins: bool = False

    def __post_init__(self) -> None:
        ENCODERS.check(self.encoder, "encoder")
        if self.evidence not in EVIDENCE_MODES:
            raise ValueError(f"evidence: expected one of {', '.join(EVIDENCE_MODES)}, got {self.evidence!r}")
        if self.random_directions < 1:
            raise ValueError("random_directions must be at least 1")
        if self.level_values is not None:
            check_level_values(self.level_values)
        levels, values = self.levels, self.level_values
        if self.binning is not None:  # given levels or values must say what the binning says (it wins otherwise)
            where = f" ({self.binning.source})" if self.binning.source else ""
            if levels is not None and levels != self.binning.levels:
                raise ValueError(
                    f"levels={levels} conflicts with the given binning{where}: {self.binning.levels} levels"
                )
            if values is not None and list(values) != list(self.binning.values):
                raise ValueError(
                    f"level_values={list(values)} conflict with the given binning{where}: {list(self.binning.values)}"
                )
            levels, values = self.binning.levels, tuple(self.binning.values)
        if levels is None:
            levels = len(values) if values is not None else DEFAULT_LEVELS
        if levels < 1:
            raise ValueError("levels must be at least 1")
        if values is not None and len(values) != levels:
            raise ValueError(f"{len(values)} level values given for {levels} levels")
        object.__setattr__(self, "levels", levels)  # frozen: resolved once, here
        object.__setattr__(self, "level_values", values)
        if self.chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")

    @property
    def n_levels(self) -> int:
        """The number of levels as resolved at construction (`levels` is never None afterwards)."""
        assert self.levels is not None
        return self.levels

    def wants_evidence(self, layout_labelled: bool) -> bool:
        """Whether to measure agreement with the labels: asked for, or "auto" and the layout carries labels."""
        return self.evidence == "labelled" or (self.evidence == "auto" and layout_labelled)

    def to_dict(self) -> dict[str, Any]:
        """What the sidecar records of these settings."""
        data = dataclasses.asdict(self)
        data["binning"] = self.binning.to_dict() if self.binning else None
        data["encoding"] = {
            k: v
            for k, v in dataclasses.asdict(self.encoding).items()
            if k not in ("layers", "poolings", "template", "description")
        }
        return data


def check_level_values(values: Sequence[float], option: str = "level_values") -> None:
    """Level values must be finite numbers that never decrease (level 0 holds raw <= 0, the last the largest raw
    margins, so a larger value means a larger margin; equal values merge levels).

    >>> check_level_values([0, 1, 1, 2])
    >>> check_level_values([3, 2, 1, 0], "--level-values")
    Traceback (most recent call last):
    ...
    ValueError: --level-values 3,2,1,0: the values must not decrease (the first is the level of raw margins <= 0, \
the last that of the largest ones); give them in increasing order
    """
    shown = ",".join(f"{v:g}" for v in values)
    if not values:
        raise ValueError(f"{option}: no values given")
    bad = next((v for v in values if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"{option} {shown}: {bad:g} is not a finite number; give finite numbers")
    if any(b < a for a, b in itertools.pairwise(values)):
        raise ValueError(
            f"{option} {shown}: the values must not decrease (the first is the level of raw margins <= 0, the last "
            "that of the largest ones); give them in increasing order"
        )


def load_directions(direction: DirectionArg) -> tuple[list[Direction], Any]:
    """Directions (one, or a list) loaded from folders or Hub ids where needed, and their paths as recorded.

    Several directions must agree (`check_directions_agree`) and write distinct columns (`margin_columns`).
    """
    items: list[Any] = list(direction) if isinstance(direction, (list, tuple)) else [direction]
    if not items:
        raise ValueError("no direction given")
    paths = [None if isinstance(d, Direction) else str(d) for d in items]
    directions = [d if isinstance(d, Direction) else Direction.from_pretrained(d) for d in items]
    if len(directions) > 1:
        check_directions_agree(directions)
    margin_columns(directions)
    return directions, paths if isinstance(direction, (list, tuple)) and len(items) > 1 else paths[0]


def margin_columns(directions: Sequence[Direction]) -> list[tuple[str, str]]:
    """(raw column, level column) per direction: `margin_raw`/`margin`, then `margin_raw_<name>`/`margin_<name>`.

    A ValueError when two directions would write one column (a second direction named `raw` writes `margin_raw`,
    the first direction's column).
    """
    columns = [MARGIN_COLUMNS] + [(f"margin_raw_{d.name}", f"margin_{d.name}") for d in directions[1:]]
    owner: dict[str, str] = {}
    for direction, pair in zip(directions, columns):
        for column in pair:
            if column in owner:
                raise ValueError(
                    f"direction {direction.name!r} would write the column {column!r}, which direction "
                    f"{owner[column]!r} writes too: rebuild one of them with another --name"
                )
            owner[column] = direction.name
    return columns


def check_margin_columns(
    found: Sequence[str], directions: Sequence[Direction], overwrite: bool = False, source: str | None = None
) -> list[str]:
    """Refuse input columns named like a column the annotation writes, unless `overwrite` (they are then replaced
    in place); returns the input columns that will be replaced.

    >>> from legend.directions import Direction
    >>> import torch
    >>> d = Direction(torch.ones(2) / 2**0.5, layer=1, pooling="last", model_id="m", fingerprint="f", hidden_size=2,
    ...               num_layers=1)
    >>> check_margin_columns(["prompt", "chosen", "rejected", "margin"], [d], source="in.jsonl")
    Traceback (most recent call last):
    ...
    legend.errors.DataError: in.jsonl: already has a column 'margin', which legend writes (margin_raw, margin): pass \
--overwrite-margins (overwrite_margins=True) to replace its values where it stands, or rename it
    """
    written = [column for pair in margin_columns(directions) for column in pair]
    clash = [column for column in found if column in written]
    if clash and not overwrite:
        raise DataError(
            f"already has a column {', '.join(repr(c) for c in clash)}, which legend writes ({', '.join(written)}): "
            "pass --overwrite-margins (overwrite_margins=True) to replace its values where it stands, or rename it",
            source=source,
        )
    return clash


def check_text_settings(
    directions: Sequence[Direction], model: Any, settings: AnnotateSettings, tokenizer: Any = None
) -> None:
    """Before the model loads: the max length leaves room for text in the directions' template, and the tokenizer
    (with its chat template) is the one the directions were built with.

    The tokenizer alone is loaded for it (a second at most); where it cannot be (a custom encoder's
    model, a model that does not load), the checks wait for the model, whose loading reports its own problem.
    """
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        from ..models import ModelSpec, load_tokenizer

        name = model.name if isinstance(model, ModelSpec) else model
        trust = model.trust_remote_code if isinstance(model, ModelSpec) else False
        try:
            tokenizer = load_tokenizer(name or directions[0].model_id, trust_remote_code=trust)
        except Exception:  # the model load reports it in its own words
            return
    first = directions[0]
    given = settings.encoding.max_length is not None
    option = "--max-length" if given else f"direction {first.name!r}: max_length"
    check_max_length(tokenizer, first.template, first.encode_config(settings.encoding).length_limit, option)
    for each in directions:
        each.check_tokenizer(tokenizer)
