"""The recommended direction of a model, built once and kept in the legend cache (`legend annotate` without
`--direction`).

The cache key is everything that decides the direction: the model's weights fingerprint, the recipe and
its settings, the bytes of its contrast pairs, and the legend version. A model with other weights gets
its own entry (a direction never meets a model it was not made for); a changed recipe or pair file
builds a new one. Entries are ordinary direction folders under `$LEGEND_CACHE/directions/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..directions import Direction
from ..encoding import EncodeConfig, Encoder
from ..errors import DirectionMismatch
from ..models import LoadedModel, cache_dir
from ..resources import XSTEST_PAIRS, sample_path
from .recipes import DEFAULT_RECIPE, PAPER_RECIPE, build_direction, recipe_settings

log = logging.getLogger("legend.selection")
CACHE_FOLDER = "directions"


@dataclass(frozen=True)
class CachedDirection:
    """A recipe's direction for a model, where it is kept, and whether this call built it."""

    direction: Direction
    path: Path
    built: bool


def recipe_cache_key(model: Encoder | LoadedModel, recipe: str = DEFAULT_RECIPE) -> str:
    """The cache key of `recipe`'s direction on `model` (16 hex digits)."""
    if recipe == PAPER_RECIPE:
        raise ValueError("the paper recipe needs induced contrast pairs; only the recommended recipe is cached")
    settings = recipe_settings(recipe)
    pairs = sample_path(XSTEST_PAIRS).read_bytes()
    identity: dict[str, Any] = {
        "fingerprint": model.fingerprint,
        "recipe": recipe,
        "settings": {k: v for k, v in settings.to_dict().items() if k != "name"},
        "pairs_sha256": hashlib.sha256(pairs).hexdigest(),
        "legend_version": __version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_recipe_direction(
    model: Encoder | LoadedModel,
    recipe: str = DEFAULT_RECIPE,
    *,
    encoding: EncodeConfig | None = None,
    root: Path | None = None,
) -> CachedDirection:
    """`recipe`'s direction for `model`: read from the legend cache, or built (one encoding pass) and kept there.

    Args:
        model: the annotator model.
        recipe: the recipe (the recommended one by default).
        encoding: batching and progress for the build (they change no number: not part of the key).
        root: the cache folder (default: `legend.models.cache_dir()`, i.e. $LEGEND_CACHE or ~/.cache/legend).

    Returns:
        A `CachedDirection`; `built` says whether this call built it.
    """
    folder = (root or cache_dir()) / CACHE_FOLDER / f"{recipe}-{recipe_cache_key(model, recipe)}"
    if folder.is_dir():
        try:
            direction = Direction.load(folder)
            direction.check_compatible(model)
            return CachedDirection(direction, folder, built=False)
        except (ValueError, FileNotFoundError, DirectionMismatch) as err:  # a damaged entry is rebuilt, not used
            log.warning("the cached direction %s cannot be used (%s): building it again", folder, err)
    fields: dict[str, Any] = {} if encoding is None else {"encoding": encoding}
    direction = build_direction(model, recipe=recipe, **fields)
    direction.extra["cache_key"] = folder.name
    direction.save(folder)
    return CachedDirection(direction, folder, built=True)
