"""Building a direction from contrast-pair files: read and check every file, then build or select.

Several files (e.g. induced pairs and bring-your-own pairs) are concatenated in order; rows flagged by
`legend induce` are left out and counted; the source of each pair is recorded in the direction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from ..data import DataError, PairView, detect_layout, load_table, pair_views, read_contrast_pairs
from ..directions import Direction, DirectionSettings, build_direction
from ..models import LoadedModel, ModelSpec, as_loaded
from ..resources import XSTEST_PAIRS, sample_path
from .recipes import DEFAULT_RECIPE, PAPER_RECIPE, recipe_settings
from .select import saturation_warning, select_direction
from .stable import repeated_answers_warning


def build_direction_from_file(
    pairs_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    model: LoadedModel | ModelSpec | str | None = None,
    settings: DirectionSettings | None = None,
    *,
    recipe: str = DEFAULT_RECIPE,
    question: str = "question",
    harmful: str = "harmful",
    harmless: str = "harmless",
    drop_refused: bool = True,
    limit: int | None = None,
    select_on: str | os.PathLike[str] | None = None,
) -> tuple[Direction, dict[str, Any]]:
    """Read contrast pairs (one file or several, mixed) and build a direction.

    Rows flagged `harmful_refused` (the model refused instead of answering) or `harmless_not_refusal`
    (a self-written harmless answer that is not a refusal) by `legend induce` are left out and
    counted. Several files (e.g. induced pairs and bring-your-own pairs) are concatenated in order;
    the source of each pair (file, first row, count) is recorded in the direction's config
    (`extra.pair_sources`). `limit` applies to each file.

    Without `settings` the `recipe`'s are used (default: the recommended recipe, `recipe_settings`),
    and without `pairs_file` its contrast pairs (the bundled XSTest pairs; the paper's recipe needs
    induced pairs). `settings.select="auto"` sweeps layer/pooling/estimator (see legend.selection;
    the ones set in `settings` stay fixed), `select_on` a labelled preference file chooses by
    agreement with its labels on a dev split instead. The pairs (and `select_on`) are read and
    checked before the model is loaded. A held-out separation that saturates is warned about
    (`report["warnings"]`, stored in `extra.warnings`): it is no evidence that the margins mean anything.

    Args:
        pairs_file: one contrast-pair file or several (None: the recipe's own pairs).
        model: the model (loaded, a ModelSpec, or a name).
        settings: the direction's settings (None: the recipe's).
        recipe: "legend" (recommended) or "paper".
        question: the question column.
        harmful: the harmful-answer column.
        harmless: the harmless-answer column.
        drop_refused: leave out rows `legend induce` flagged.
        limit: at most this many pairs of each file.
        select_on: labelled preference pairs to choose the configuration by.

    Returns:
        (the Direction, a report: pairs read and used, sources, held-out separation, warnings).

    >>> import json, tempfile, legend
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "pairs.jsonl"
    >>> rows = [{"question": f"Q{i}?", "harmful": f"Sure {i}.", "harmless": f"No, {i}."} for i in range(6)]
    >>> _ = path.write_text("".join(json.dumps(r) + chr(10) for r in rows))
    >>> direction, report = build_direction_from_file(path, legend.tiny_model(), recipe="paper")
    >>> direction.layer, report["pairs_used"], direction.extra["recipe"]
    (4, 6, 'paper')
    """
    settings = settings or recipe_settings(recipe)
    if pairs_file is None:
        if recipe == PAPER_RECIPE:
            raise ValueError("the paper recipe needs induced contrast pairs: give --pairs (from `legend induce`)")
        pairs_file = sample_path(XSTEST_PAIRS)
    files = [pairs_file] if isinstance(pairs_file, (str, os.PathLike)) else list(pairs_file)
    if not files:
        raise ValueError("no contrast pair file given")
    selecting = settings.selecting or select_on is not None
    preference_views = _preference_views(select_on) if select_on is not None else None
    pairs: list[Any] = []
    sources: list[dict[str, Any]] = []
    n_read = left_refused = left_not_refusal = 0
    for path in files:
        read = read_contrast_pairs(path, question=question, harmful=harmful, harmless=harmless)
        refused, not_refusal = _flags(path, len(read))
        keep = [p for p, r, nr in zip(read, refused, not_refusal) if not drop_refused or not (r or nr)]
        if limit is not None:
            keep = keep[:limit]
        sources.append(
            {
                "file": str(path),
                "first": len(pairs),
                "count": len(keep),
                "read": len(read),
                "left_out_refused": int(sum(refused)) if drop_refused else 0,
                "left_out_not_refusal": int(sum(nr and not r for r, nr in zip(refused, not_refusal)))
                if drop_refused
                else 0,
            }
        )
        pairs.extend(keep)
        n_read += len(read)
        left_refused += sources[-1]["left_out_refused"]
        left_not_refusal += sources[-1]["left_out_not_refusal"]
    if len(pairs) < 2:
        raise DataError(
            f"need at least 2 contrast pairs to build a direction, got {len(pairs)}"
            + (
                f" ({left_refused + left_not_refusal} flagged pairs left out)"
                if left_refused + left_not_refusal
                else ""
            ),
            source=", ".join(str(f) for f in files),
        )
    lm = as_loaded(model)
    start = time.perf_counter()
    if selecting:
        # Two or more files: validate each source with a direction fitted on the others (cross-source).
        groups = [src["file"] for src in sources for _ in range(src["count"])] if len(files) > 1 else None
        direction = select_direction(lm, pairs, settings, select_on=preference_views, groups=groups)
        if select_on is not None:
            direction.extra["selection"]["select_on"] = str(select_on)
    else:
        direction = build_direction(lm, pairs, settings)
    warning = saturation_warning(direction.heldout)
    direction.extra.update(
        pairs_file=str(files[0]) if len(files) == 1 else [str(f) for f in files],
        pair_sources=sources,
        pairs_read=n_read,
        pairs_left_out_refused=left_refused,
        pairs_left_out_not_refusal=left_not_refusal,
        warnings=_warnings(direction, pairs, warning),
        recipe=settings.recipe,
    )
    report = {
        "pairs_read": n_read,
        "left_out_refused": left_refused,
        "left_out_not_refusal": left_not_refusal,
        "pairs_used": len(pairs),
        "sources": sources,
        "seconds": round(time.perf_counter() - start, 3),
        "heldout": direction.heldout,
        "layer": direction.layer,
        "pooling": direction.pooling,
        "estimator": direction.estimator,
        "warnings": direction.extra["warnings"],
    }
    if selecting:
        report["selection"] = {k: v for k, v in direction.extra["selection"].items() if k != "test_rows"}
        report["candidates"] = len(direction.extra["sweep"])
    return direction, report


def _preference_views(path: str | os.PathLike[str]) -> list[PairView]:
    """Labelled preference pairs (any supported layout) for `--select-on`."""
    table = load_table(path)
    return pair_views(table, detect_layout(table, source=str(path)), source=str(path))


def _flags(pairs_file: str | os.PathLike[str], n: int) -> tuple[list[bool], list[bool]]:
    """The `harmful_refused` and `harmless_not_refusal` flags of `legend induce` (all False when absent)."""
    table = load_table(pairs_file)
    return tuple(  # type: ignore[return-value]
        [bool(v) for v in table[column]] if column in table.column_names else [False] * n
        for column in ("harmful_refused", "harmless_not_refusal")
    )


def _warnings(direction: Direction, pairs: Sequence[Any], saturation: str | None) -> list[str]:
    """What to warn about a built direction: the selection's own warnings (an unstable or edge layer choice,
    repeated answers), repeated answers for a direction built without selection, and a saturated separation."""
    warnings = list(direction.extra.get("warnings") or [])
    if "selection" not in direction.extra:
        repeated = repeated_answers_warning([p.harmless for p in pairs], [p.harmful for p in pairs])
        warnings += [repeated] if repeated else []
    return warnings + ([saturation] if saturation else [])
