"""Annotation in memory: a `datasets.Dataset` in, the same rows with margin columns out."""

from __future__ import annotations

import os
import time

import datasets

from ..data import DataError, PairView, detect_layout, load_table, pair_views
from ..encoding import load_encoder
from ..margins import compute_margins_multi
from ..models import LoadedModel, ModelSpec
from .finish import Annotation, finish_annotation
from .settings import AnnotateSettings, DirectionArg, check_margin_columns, check_text_settings, load_directions


def annotate(
    dataset: datasets.Dataset | str | os.PathLike[str],
    direction: DirectionArg,
    model: LoadedModel | ModelSpec | str | None = None,
    settings: AnnotateSettings | None = None,
    *,
    source: str | None = None,
) -> Annotation:
    """Add `margin_raw` and `margin` to every row of a preference dataset held in memory.

    `dataset` is a `datasets.Dataset` or anything `load_table` reads; `direction` a Direction or its
    folder; `model` a loaded model, a model spec, or None for the model the direction was built with.
    The layout (explicit / conversational / hh / pku / implicit) is detected unless columns are named.
    Several directions (a list) are applied in one encoding pass: the first fills `margin_raw`/`margin`,
    each other one `margin_raw_<name>`/`margin_<name>`, binned with its own edges.

    Args:
        dataset: the preference pairs (any layout legend reads).
        direction: a Direction, its folder or Hub id, or a list of them.
        model: the model (an Encoder's model: a LoadedModel, a ModelSpec or a name; None: the direction's).
        settings: bins, columns, encoding and encoder settings.
        source: the name errors and the summary give the data.

    Returns:
        An `Annotation`: the rows with margin columns, the bins, a summary.

    >>> import datasets, legend
    >>> lm = legend.tiny_model()
    >>> direction = legend.build_direction(lm, [legend.ContrastPair("Q?", "Sure.", "No.")] * 4, recipe="paper")
    >>> rows = datasets.Dataset.from_list([{"prompt": "Hi", "chosen": "No.", "rejected": "Sure."}] * 3)
    >>> annotated = annotate(rows, direction, lm)
    >>> annotated.dataset.column_names, annotated.summary["rows"]
    (['prompt', 'chosen', 'rejected', 'margin_raw', 'margin'], 3)
    """
    settings = settings or AnnotateSettings()
    directions, _ = load_directions(direction)  # checked before reading data or loading the model
    if not isinstance(dataset, datasets.Dataset):
        source = source or str(dataset)
        dataset = load_table(dataset)
    source = source or "<dataset>"
    layout = detect_layout(dataset, settings.columns, source=source)
    views: list[PairView] = pair_views(dataset, layout, settings.columns, source=source)
    check_margin_columns(dataset.column_names, directions, settings.overwrite_margins, source=source)
    check_text_settings(directions, model, settings)
    # Only now load the model: bad input fails in a second, not after loading weights.
    encoder = load_encoder(settings.encoder, model, fallback=directions[0].model_id)
    start = time.perf_counter()
    try:
        results = compute_margins_multi(encoder, views, directions, settings.encoding)
    except DataError as err:
        raise err.located(source) from None
    finished = finish_annotation(
        source=source,
        out=None,
        layout=layout,
        margins=results,
        directions=directions,
        direction_path=None,
        settings=settings,
        model=(encoder.model_id, encoder.dtype_name),
        seconds=time.perf_counter() - start,
    )
    return finished.annotation(finished.columns(dataset))
