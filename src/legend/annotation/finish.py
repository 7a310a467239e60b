"""The one finishing step of every annotation (in memory, the local and Ray engines, the demo):
bins fitted (or loaded), margin columns added, the summary and the metadata document built."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from ..data import DataError
from ..directions import Direction
from ..encoding import ANSWER_CUT_SHARE
from ..margins import Binning, MarginResult, describe
from .metadata import sidecar_document
from .settings import AnnotateSettings, margin_columns


@dataclass
class Annotation:
    """An annotated dataset with the binning used and a summary of what happened.

    `dataset` is None when the rows went to a file rather than to memory (`annotate_file`).
    """

    dataset: datasets.Dataset | None
    binning: Binning
    summary: dict[str, Any]
    margins: MarginResult
    # Directions after the first (primary) one: name -> {"binning", "margins", "direction", ...}.
    secondary: dict[str, dict[str, Any]] = field(default_factory=dict)


def with_margins(
    chunk: datasets.Dataset, raws: Sequence[np.ndarray], binnings: Sequence[Binning], directions: Sequence[Direction]
) -> datasets.Dataset:
    """The rows with each direction's raw and binned margin columns after the input's.

    A column of the input with one of those names (allowed by `AnnotateSettings.overwrite_margins`,
    checked before) gets the new values where it stands: the column order is the input's.
    """
    names = margin_columns(directions)
    order = list(chunk.column_names)
    order += [column for pair in names for column in pair if column not in order]
    chunk = chunk.remove_columns([c for pair in names for c in pair if c in chunk.column_names])
    for (raw_name, level_name), raw, binning in zip(names, raws, binnings):
        chunk = chunk.add_column(raw_name, raw.tolist()).add_column(level_name, binning.apply(raw).tolist())
    return chunk.select_columns(order) if chunk.column_names != order else chunk


def fit_binnings(raws: Sequence[np.ndarray], settings: AnnotateSettings) -> list[Binning]:
    """Each direction's own bin edges; edges given in `settings.binning` apply to the first direction only."""
    return [
        settings.binning if i == 0 and settings.binning else Binning.fit(raw, settings.n_levels, settings.level_values)
        for i, raw in enumerate(raws)
    ]


def annotation_summary(
    source: str,
    layout: str,
    margins: MarginResult,
    binning: Binning,
    direction: Direction,
    model: tuple[str, str],
    seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """The summary `legend annotate` prints and stores in the sidecar; `model` is (model id, dtype name)."""
    raw = margins.raw
    binned = binning.apply(raw)
    return {
        "source": source,
        "rows": int(raw.size),
        "layout": layout,
        "identical_pairs": margins.n_identical,
        "truncated_texts": margins.n_truncated_texts,
        "answer_truncated_pairs": margins.n_answer_truncated,
        "tokens": margins.n_tokens,
        "forward_tokens": margins.extra.get("forward_tokens"),
        "seconds": round(seconds, 3),
        "pairs_per_second": round(raw.size / seconds, 3) if seconds > 0 else None,
        "margin_raw": describe(raw),
        "margin": describe(binned, binned),
        "direction": {
            "name": direction.name,
            "model_id": direction.model_id,
            "layer": direction.layer,
            "pooling": direction.pooling,
            "estimator": direction.estimator,
            "fingerprint": direction.fingerprint,
        },
        "model_id": model[0],
        "dtype": model[1],
        **extra,
    }


def other_directions_summary(
    directions: Sequence[Direction], raws: Sequence[np.ndarray], binnings: Sequence[Binning]
) -> dict[str, Any]:
    """The summary's `other_directions` (directions after the first)."""
    summary = {}
    for direction, raw, binning, (raw_name, level_name) in zip(
        directions[1:], raws[1:], binnings[1:], margin_columns(directions)[1:]
    ):
        binned = binning.apply(raw)
        summary[direction.name] = {
            "columns": [raw_name, level_name],
            "layer": direction.layer,
            "pooling": direction.pooling,
            "estimator": direction.estimator,
            "margin_raw": describe(raw),
            "margin": describe(binned, binned),
        }
    return summary


def secondary_of(
    directions: Sequence[Direction], margins: Sequence[MarginResult], binnings: Sequence[Binning]
) -> dict[str, dict[str, Any]]:
    """`Annotation.secondary` for the directions after the first."""
    return {
        d.name: {
            "binning": b,
            "margins": m,
            "direction": d,
            "margin_raw": describe(m.raw),
            "margin": describe(b.apply(m.raw), b.apply(m.raw)),
        }
        for d, m, b in zip(directions[1:], margins[1:], binnings[1:])
    }


@dataclass
class Finished:
    """What the finishing step produces: each direction's bins, the summary, and the metadata document."""

    binnings: list[Binning]
    summary: dict[str, Any]
    document: dict[str, Any]
    margins: list[MarginResult]
    directions: list[Direction]

    def annotation(self, dataset: datasets.Dataset | None = None) -> Annotation:
        """The `Annotation` a caller returns (`dataset` None when the rows went to a file)."""
        return Annotation(
            dataset=dataset,
            binning=self.binnings[0],
            summary=self.summary,
            margins=self.margins[0],
            secondary=secondary_of(self.directions, self.margins, self.binnings),
        )

    def columns(self, chunk: datasets.Dataset, rows: slice | None = None) -> datasets.Dataset:
        """`chunk` with every direction's margin columns (the rows `rows` of the margins; all when None)."""
        raws = [m.raw if rows is None else m.raw[rows] for m in self.margins]
        return with_margins(chunk, raws, self.binnings, self.directions)


log = logging.getLogger("legend.annotation")


def check_answers_kept(margins: MarginResult, max_length: int, source: str) -> None:
    """Truncation that removed most of an answer: an error when it hit every pair compared, else a warning naming
    how many pairs it hit.

    A pair "lost its answer" when truncation from the left cut more than `ANSWER_CUT_SHARE` (half) of
    the answer tokens of its chosen or rejected text (`TokenizedText.answer_cut`): its margin then
    compares what is left, mostly the template's end-of-turn tokens, not the answers.
    """
    compared = int(margins.raw.size) - margins.n_identical
    cut = margins.n_answer_truncated
    if not cut:
        return
    what = (
        f"truncation to {max_length} tokens removed most of the answer (more than {ANSWER_CUT_SHARE:.0%} of its "
        "tokens) of"
    )
    if cut >= compared:
        raise DataError(
            f"{what} every one of the {compared} pairs compared: their margins would compare what is left, not the "
            "answers; raise --max-length",
            source=source,
        )
    log.warning(
        "warning: %s: %s %d of %d pairs: their margins compare what is left of the answers; raise --max-length "
        "(the summary counts them as answer_truncated_pairs)",
        source,
        what,
        cut,
        compared,
    )


def finish_annotation(
    *,
    source: str,
    out: Any,
    layout: str,
    margins: Sequence[MarginResult],
    directions: Sequence[Direction],
    direction_path: Any,
    settings: AnnotateSettings,
    model: tuple[str, str],
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> Finished:
    """Fit the bins, build the summary and the metadata document of an annotation.

    Args:
        source: the input as the summary names it.
        out: the output file (None in memory).
        layout: the input's layout.
        margins: one MarginResult per direction (raw margins of every row, in order).
        directions: the directions, the first filling `margin_raw`/`margin`.
        direction_path: where the directions came from, as recorded.
        settings: the annotation's settings (bins given or fitted, levels).
        model: (model id, dtype name).
        seconds: the time the annotation took.
        extra: engine-specific summary entries.

    Returns:
        A `Finished` holding the bins, summary and document.
    """
    check_answers_kept(margins[0], directions[0].encode_config(settings.encoding).length_limit, source)
    raws = [m.raw for m in margins]
    binnings = fit_binnings(raws, settings)
    summary = annotation_summary(
        source, layout, margins[0], binnings[0], directions[0], model, seconds, **(extra or {})
    )
    if len(directions) > 1:
        summary["other_directions"] = other_directions_summary(directions, raws, binnings)
    document = sidecar_document(
        source,
        out,
        direction_path,
        binnings[0],
        settings,
        summary,
        {d.name: b for d, b in zip(directions[1:], binnings[1:])},
    )
    return Finished(binnings, summary, document, list(margins), list(directions))
