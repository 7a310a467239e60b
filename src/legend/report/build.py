"""Building the report: one self-contained HTML page about an annotated dataset's margins.

`build_report` writes `<out>.html` and its figures as PNGs in a hidden folder beside it
(`.<out name>.figures/<stem>_<figure>.png`); the same PNGs are embedded in the page as base64, so the
HTML alone can be mailed or archived, and a report written into a dataset folder leaves it loadable. Sections:
distribution of the margins (raw and by level), agreement with the preference labels (the metrics of
`legend.quality`, with intervals), the margin against the length difference, the layer × pooling ×
estimator sweep when the direction artifact has one (`config.json` → `extra.sweep`), and the pairs
with the most negative margins, with their texts (escaped).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn: ~1.2 s that annotate would pay for nothing
    pass

from ..io import write_bytes_atomically
from ..quality import (
    DEFAULT_RANDOM_DIRECTIONS,
    evaluate_labelled,
    read_labelled_margins,
)
from ..selection import saturation_warning
from .figures import figure_png, plot_agreement, plot_length, plot_margins, plot_sweep, sweep_rows
from .page import render_page


@dataclass
class ReportResult:
    html_path: Path
    images: dict[str, Path]
    metrics: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- building


def read_sidecar(data: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata `legend annotate` wrote for `data` (`legend.annotation.find_sidecar`), if there is one."""
    from ..annotation import read_sidecar as read_metadata

    return read_metadata(data)


def read_direction_config(
    direction: str | os.PathLike | None, sidecar: dict[str, Any] | None, notes: list[str]
) -> dict[str, Any] | None:
    """The direction's config.json: from `direction`, else the folder named in the sidecar, if it exists."""
    from ..directions import CONFIG_FILE

    folder = direction or (sidecar or {}).get("direction_path")
    if not folder:
        return None
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        if direction:
            raise FileNotFoundError(f"{folder}: not a direction folder (no {CONFIG_FILE})")
        notes.append(f"The direction folder named in the sidecar ({folder}) was not found; no sweep shown.")
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _write(payload: bytes, handle: IO[bytes]) -> None:
    handle.write(payload)


def build_report(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    direction: str | os.PathLike | None = None,
    metrics: dict[str, Any] | None = None,
    labels: bool = True,
    worst: int = 10,
    margin_column: str = "margin_raw",
    level_column: str = "margin",
    n_bootstrap: int = 1000,
    seed: int = 0,
    limit: int | None = None,
    n_random: int = DEFAULT_RANDOM_DIRECTIONS,
    recompute: bool = False,
    model: Any = None,
) -> ReportResult:
    """Write the HTML report of an annotated file (and its PNG figures next to it).

    `metrics`: a `legend evaluate` result to show instead of computing it; `labels=False` when the
    chosen answer is not meant to be the safer one (then no agreement section). `direction` (else
    the one named in the sidecar) provides the layer × pooling × estimator sweep, if it has one.
    The agreement is shown against the random-direction floor (`n_random` directions) when the
    pairs' embedding differences are known: from the file beside the data (`differences_path`), or,
    with `recompute`, from one encoding pass with that direction (`model`: None = the direction's).
    """
    out = Path(out)
    notes: list[str] = []
    want_floor = labels and metrics is None and n_random > 0
    labelled = read_labelled_margins(data, margin_column=margin_column, limit=limit, keep_differences=want_floor)
    sidecar = read_sidecar(data)
    config = read_direction_config(direction, sidecar, notes)
    warning = saturation_warning((config or {}).get("heldout") or {})
    if warning:
        notes.append(f"Warning: {warning}.")
    if want_floor and labelled.differences is None and recompute:
        folder = direction or (sidecar or {}).get("direction_path")
        if folder is not None and Path(folder).is_dir() and margin_column == "margin_raw":
            recomputed = read_labelled_margins(data, direction=folder, model=model, limit=limit, keep_differences=True)
            gap = float(np.max(np.abs(recomputed.raw - labelled.raw))) if labelled.raw.size else 0.0
            scale = float(np.max(np.abs(labelled.raw))) if labelled.raw.size else 0.0
            if gap > 1e-3 * max(scale, 1.0):
                notes.append(
                    f"The margins recomputed with {folder} differ from the file's by up to {gap:.3g}: the floor "
                    "is computed for the recomputed ones."
                )
                labelled.raw = recomputed.raw
            labelled.differences = recomputed.differences
            labelled.differences_source = recomputed.differences_source
        else:
            notes.append("No random floor: no embedding differences beside the data and no direction folder found.")
    raw = labelled.raw
    levels = (
        np.asarray(labelled.dataset[level_column], dtype=np.float64)
        if level_column in labelled.dataset.column_names
        else None
    )
    edges = ((sidecar or {}).get("binning") or {}).get("edges")
    if labels and metrics is None:
        metrics = evaluate_labelled(labelled, n_bootstrap=n_bootstrap, seed=seed, n_random=n_random)

    figures: dict[str, bytes] = {"margins": figure_png(plot_margins(raw, edges, levels))}
    if metrics:
        figures["agreement"] = figure_png(plot_agreement(metrics["metrics"]))
    unit = (metrics or {}).get("settings", {}).get("length_unit", "chars")
    if unit != "chars":
        notes.append(f"The evaluate metrics measure length in {unit}; the scatter uses characters.")
    length_diff = np.array([len(v.chosen) - len(v.rejected) for v in labelled.views], dtype=np.float64)
    figures["length"] = figure_png(plot_length(raw, length_diff, "chars"))
    rows = sweep_rows(config)
    if rows:
        figures["sweep"] = figure_png(plot_sweep(rows, config))

    folder = out.parent / f".{out.name}.figures"  # hidden: a dataset folder still loads as its rows
    images = {name: folder / f"{out.stem}_{name}.png" for name in figures}
    for name, png in figures.items():
        write_bytes_atomically(images[name], functools.partial(_write, png))
    page = render_page(labelled, sidecar, config, metrics, rows, figures, levels, worst, notes)
    write_bytes_atomically(out, functools.partial(_write, page.encode("utf-8")))
    return ReportResult(html_path=out, images=images, metrics=metrics, notes=notes)
