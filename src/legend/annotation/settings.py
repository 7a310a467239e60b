"""What an annotation run is: its settings, the directions it applies and the columns they fill."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import DEFAULT_CHUNK_ROWS, ColumnNames
from ..directions import Direction
from ..encoding import DEFAULT_ENCODER, ENCODERS, EncodeConfig
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

    def __post_init__(self) -> None:
        ENCODERS.check(self.encoder, "encoder")
        if self.evidence not in EVIDENCE_MODES:
            raise ValueError(f"evidence: expected one of {', '.join(EVIDENCE_MODES)}, got {self.evidence!r}")
        if self.random_directions < 1:
            raise ValueError("random_directions must be at least 1")
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


def load_directions(direction: DirectionArg) -> tuple[list[Direction], Any]:
    """Directions (one, or a list) loaded from folders or Hub ids where needed, and their paths as recorded."""
    items: list[Any] = list(direction) if isinstance(direction, (list, tuple)) else [direction]
    if not items:
        raise ValueError("no direction given")
    paths = [None if isinstance(d, Direction) else str(d) for d in items]
    directions = [d if isinstance(d, Direction) else Direction.from_pretrained(d) for d in items]
    if len(directions) > 1:
        check_directions_agree(directions)
    return directions, paths if isinstance(direction, (list, tuple)) and len(items) > 1 else paths[0]


def margin_columns(directions: Sequence[Direction]) -> list[tuple[str, str]]:
    """(raw column, level column) per direction: `margin_raw`/`margin`, then `margin_raw_<name>`/`margin_<name>`."""
    return [MARGIN_COLUMNS] + [(f"margin_raw_{d.name}", f"margin_{d.name}") for d in directions[1:]]
