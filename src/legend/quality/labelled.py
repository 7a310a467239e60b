"""Labelled margins: a preference table read with its raw margins, pair texts and severity differences
(`read_labelled_margins`, annotating it when asked), and its evaluation with the random floor
(`evaluate_labelled`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from ..annotation import AnnotateSettings, annotate
from ..annotation.differences import find_differences, read_differences
from ..data import ColumnNames, DataError, PairView, read_margin_column, read_pairs
from .agreement import evaluate_margins
from .floor import DEFAULT_RANDOM_DIRECTIONS, random_floor


@dataclass
class LabelledMargins:
    """A preference table with its raw margins, pair texts and (if known) severity differences."""

    dataset: datasets.Dataset
    views: list[PairView]
    raw: np.ndarray
    severity: np.ndarray | None
    source: str
    annotated_now: bool = False
    margin_column: str = "margin_raw"
    # Embedding differences e(p+c) − e(p+r) at the direction's layer/pooling (for the random floor).
    differences: np.ndarray | None = None
    differences_source: str | None = None


PKU_SEVERITY = ("response_0_severity_level", "response_1_severity_level", "safer_response_id")


def severity_difference(
    dataset: datasets.Dataset, columns: tuple[str, str] | None = None, *, source: str = "<data>"
) -> np.ndarray | None:
    """Severity of rejected − severity of chosen per row, or None when the table has no severity.

    `columns` names (chosen severity, rejected severity) columns; otherwise PKU-SafeRLHF's
    `response_{0,1}_severity_level` are mapped through `safer_response_id` (the safer one is chosen).
    """
    names = dataset.column_names
    if columns is not None:
        for column in columns:
            if column not in names:
                raise DataError(f"{source}: no severity column {column!r} (columns: {', '.join(names)})")
        chosen, rejected = (_numbers(dataset[c], c, source) for c in columns)
        return rejected - chosen
    if not all(c in names for c in PKU_SEVERITY):
        return None
    level0, level1 = (_numbers(dataset[c], c, source) for c in PKU_SEVERITY[:2])
    safer = _numbers(dataset["safer_response_id"], "safer_response_id", source)
    return np.where(safer == 0, level1 - level0, level0 - level1)


def _numbers(values: Sequence[Any], column: str, source: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values, start=1):
        try:
            out[row - 1] = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{source}: row {row}: field {column!r}: expected a number, got {value!r}") from None
        if not math.isfinite(out[row - 1]):
            raise DataError(f"{source}: row {row}: field {column!r}: expected a finite number, got {value!r}")
    return out


def read_labelled_margins(
    data: str | os.PathLike | datasets.Dataset,
    *,
    direction: str | os.PathLike | None = None,
    model: Any = None,
    columns: ColumnNames = ColumnNames(),
    severity_columns: tuple[str, str] | None = None,
    limit: int | None = None,
    split: str = "train",
    annotate_settings: AnnotateSettings | None = None,
    margin_column: str = "margin_raw",
    source: str | None = None,
    keep_differences: bool = False,
) -> LabelledMargins:
    """Read a preference table with its margins: `margin_column` if present, else annotate with `direction`.

    `model` (a LoadedModel or a spec) is only used when annotating (which writes `margin_raw`);
    None means the direction's model. Any numeric column of margins can be read (e.g. one
    `margin_<name>` column of a multi-direction annotation). With `keep_differences` and a
    direction, the same encoding pass also keeps the pairs' embedding differences (for
    `random_floor`); without a direction they are read from an embeddings file beside the data
    (`legend.annotation.differences_path`, written by `legend annotate --keep-differences`) when there is one.
    """
    pairs = read_pairs(data, columns, split=split, limit=limit, source_name=source)
    dataset, source = pairs.table, pairs.source
    annotated_now = False
    differences = None
    differences_source = None
    if direction is not None and keep_differences:
        settings = annotate_settings or AnnotateSettings(columns=columns)
        raw_now, differences = _margins_and_differences(dataset, direction, model, settings, source)
        if "margin_raw" in dataset.column_names:
            dataset = dataset.remove_columns("margin_raw")
        dataset = dataset.add_column("margin_raw", raw_now.tolist())
        annotated_now, margin_column, differences_source = True, "margin_raw", "recomputed with the direction"
    elif direction is not None:
        settings = annotate_settings or AnnotateSettings(columns=columns)
        dataset = annotate(dataset, direction, model, settings, source=source).dataset
        annotated_now, margin_column = True, "margin_raw"
    raw = read_margin_column(dataset, margin_column, source=source, instead="pass --direction")
    if differences is None and keep_differences and not isinstance(data, datasets.Dataset):
        stored = find_differences(data)
        if stored is not None:
            differences = read_differences(stored, len(dataset), margin_column)
            differences_source = str(stored)
    return LabelledMargins(
        dataset=dataset,
        views=pairs.views,
        raw=raw,
        severity=severity_difference(dataset, severity_columns, source=source),
        source=source,
        annotated_now=annotated_now,
        margin_column=margin_column,
        differences=differences,
        differences_source=differences_source,
    )


def _margins_and_differences(
    dataset: datasets.Dataset, direction: Any, model: Any, settings: AnnotateSettings, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Raw margins and embedding differences of every pair from ONE encoding pass (model loaded last)."""
    from ..annotation import load_directions
    from ..margins import compute_margins_multi
    from ..models import as_loaded

    directions, _ = load_directions(direction)
    views = read_pairs(dataset, settings.columns, source_name=source).views
    lm = as_loaded(model, fallback=directions[0].model_id)
    result = compute_margins_multi(lm, views, directions[:1], settings.encoding, keep_differences=True)[0]
    assert result.differences is not None
    return result.raw, result.differences


def evaluate_labelled(
    labelled: LabelledMargins,
    *,
    n_random: int = DEFAULT_RANDOM_DIRECTIONS,
    **options: Any,
) -> dict[str, Any]:
    """`evaluate_margins` on what `read_labelled_margins` returned, with the source recorded.

    When the embedding differences are known, `result["random_floor"]` holds `random_floor` with
    `n_random` directions (0: skip it); else `result["random_floor"]` is None.
    """
    chosen, rejected = [v.chosen for v in labelled.views], [v.rejected for v in labelled.views]
    result = evaluate_margins(labelled.raw, chosen, rejected, labelled.severity, **options)
    result["source"] = labelled.source
    result["random_floor"] = None
    if labelled.differences is not None and n_random > 0:
        floor = random_floor(
            labelled.differences,
            labelled.raw,
            chosen,
            rejected,
            labelled.severity,
            length=options.get("length", len),
            n_directions=n_random,
            seed=options.get("seed", 0),
        )
        floor["differences_source"] = labelled.differences_source
        result["random_floor"] = floor
    return result
