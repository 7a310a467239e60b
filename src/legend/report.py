"""One self-contained HTML page about an annotated dataset's margins.

`build_report` writes `<out>.html` and its figures as PNGs next to it (`<stem>_<figure>.png`); the
same PNGs are embedded in the page as base64, so the HTML alone can be mailed or archived. Sections:
distribution of the margins (raw and by level), agreement with the preference labels (the metrics of
`legend.quality`, with intervals), the margin against the length difference, the layer × pooling ×
estimator sweep when the direction artifact has one (`config.json` → `extra.sweep`), and the pairs
with the most negative margins, with their texts (escaped).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn: ~1.2 s that annotate would pay for nothing
    from matplotlib.figure import Figure

from ._version import __version__
from .data import PairView
from .io import write_bytes_atomically
from .quality import (
    DEFAULT_RANDOM_DIRECTIONS,
    LabelledMargins,
    evaluate_labelled,
    floor_line,
    read_labelled_margins,
)
from .selection import saturation_warning

SWEEP_KEYS = ("layer", "pooling", "estimator", "accuracy", "auc")
SNIPPET_CHARS = 400


@dataclass
class ReportResult:
    html_path: Path
    images: dict[str, Path]
    metrics: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- figures


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib Figure (object API, no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def figure_png(fig: Figure) -> bytes:
    """Render a figure with the Agg backend (no pyplot, no display) to PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def plot_margins(raw: np.ndarray, edges: list[float] | None, levels: np.ndarray | None) -> Figure:
    """Histogram of the raw margins (bin edges marked) and the count of each margin level."""
    fig = new_figure(figsize=(11, 3.8))
    ax_raw, ax_level = fig.subplots(1, 2, width_ratios=(2, 1))
    ax_raw.hist(raw, bins=min(60, max(10, raw.size // 10)), color="#4c72b0", edgecolor="white", linewidth=0.4)
    ax_raw.axvline(0.0, color="black", linewidth=1.2, label="0: chosen = rejected")
    for edge in (edges or [])[1:]:
        ax_raw.axvline(edge, color="#dd8452", linestyle="--", linewidth=1)
    if edges and len(edges) > 1:
        ax_raw.plot([], [], color="#dd8452", linestyle="--", label="level edges")
    ax_raw.set(
        title=f"margin_raw ({raw.size} pairs; {np.mean(raw > 0):.1%} positive)",
        xlabel="raw margin (positive: chosen is safer)",
        ylabel="pairs",
    )
    ax_raw.legend(loc="upper left", fontsize=8)
    if levels is not None and levels.size:
        values, counts = np.unique(levels, return_counts=True)
        ax_level.bar([f"{v:g}" for v in values], counts, color="#55a868")
        ax_level.set(title="pairs per margin level", xlabel="margin (binned)", ylabel="pairs")
    else:
        ax_level.text(0.5, 0.5, "no binned margin column", ha="center", va="center", transform=ax_level.transAxes)
        ax_level.set_axis_off()
    fig.tight_layout()
    return fig


def plot_agreement(metrics: dict[str, Any]) -> Figure:
    """Agreement metrics with their bootstrap intervals against the 0.5 chance line."""
    names = [
        ("share_positive", "share positive"),
        ("auc", "AUC"),
        ("agreement_chosen_shorter", "chosen shorter"),
        ("agreement_chosen_longer", "chosen longer"),
        ("agreement_length_balanced", "length-balanced"),
    ]
    shown = [(label, metrics[key]) for key, label in names if key in metrics and metrics[key]["value"] is not None]
    fig = new_figure(figsize=(8, 3.6))
    ax = fig.subplots()
    positions = np.arange(len(shown))
    values = np.array([m["value"] for _, m in shown])
    low = np.array([m["ci_low"] if m["ci_low"] is not None else m["value"] for _, m in shown])
    high = np.array([m["ci_high"] if m["ci_high"] is not None else m["value"] for _, m in shown])
    ax.bar(positions, values, color="#4c72b0")
    ax.errorbar(positions, values, yerr=[values - low, high - values], fmt="none", ecolor="black", capsize=4)
    ax.axhline(0.5, color="#c44e52", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.set_xticks(positions, [label for label, _ in shown])
    ax.set(ylim=(0, 1), ylabel="agreement with labels", title="Agreement with the preference labels (95% CI)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_length(raw: np.ndarray, length_diff: np.ndarray, unit: str) -> Figure:
    """Margin against the length difference: a length-driven direction shows a clear trend here."""
    fig = new_figure(figsize=(6.5, 4))
    ax = fig.subplots()
    ax.scatter(length_diff, raw, s=8, alpha=0.5, color="#4c72b0")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set(
        xlabel=f"length(chosen) − length(rejected), {unit}", ylabel="raw margin", title="Margin vs length difference"
    )
    fig.tight_layout()
    return fig


def sweep_rows(config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The usable rows of `extra.sweep` (those with layer, pooling, estimator, accuracy, auc)."""
    rows = ((config or {}).get("extra") or {}).get("sweep") or []
    return [r for r in rows if isinstance(r, dict) and all(r.get(k) is not None for k in SWEEP_KEYS)]


def plot_sweep(rows: list[dict[str, Any]], chosen: dict[str, Any] | None = None) -> Figure:
    """Held-out accuracy and AUC per layer, one line per pooling × estimator; the chosen one circled."""
    fig = new_figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharex=True)
    combos = sorted({(str(r["pooling"]), str(r["estimator"])) for r in rows})
    for metric, ax in zip(("accuracy", "auc"), axes):
        for pooling, estimator in combos:
            points = sorted(
                (int(r["layer"]), float(r[metric]))
                for r in rows
                if str(r["pooling"]) == pooling and str(r["estimator"]) == estimator
            )
            ax.plot(*zip(*points), marker="o", markersize=3, label=f"{pooling} / {estimator}")
        if chosen:
            picked = [
                r
                for r in rows
                if (int(r["layer"]), str(r["pooling"]), str(r["estimator"]))
                == (int(chosen["layer"]), str(chosen["pooling"]), str(chosen["estimator"]))
            ]
            for row in picked:
                ax.plot(
                    int(row["layer"]),
                    float(row[metric]),
                    marker="o",
                    markersize=12,
                    markerfacecolor="none",
                    markeredgecolor="black",
                    markeredgewidth=1.5,
                    linestyle="none",
                )
        ax.axhline(0.5, color="#c44e52", linestyle="--", linewidth=0.8)
        ax.set(xlabel="layer", ylabel=f"held-out {metric}", title=f"Sweep: held-out {metric}")
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; background: #fff; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { white-space: pre-wrap; max-width: 22em; font-size: .88em; overflow-wrap: anywhere; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: .92em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]], numeric: Collection[int] = ()) -> str:
    """An HTML table; cells are escaped here, so callers pass plain text."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if i in numeric else "text"}">{_esc(c)}</td>' for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _facts(rows: list[list[str]]) -> str:
    """A two-column table of labels and values (no header row)."""
    body = "".join(f'<tr><th scope="row">{_esc(k)}</th><td class="num">{_esc(v)}</td></tr>' for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{_esc(alt)}" src="data:image/png;base64,{data}"></p>'


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The text cut to `limit` characters (with an ellipsis when cut). Escaping is left to the page."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _prompt_text(view: PairView) -> str:
    users = [m.get("content", "") for m in view.prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _metrics_section(metrics: dict[str, Any]) -> str:
    rows = [
        [name, _fmt(m["value"]), f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]", m.get("description", "")]
        for name, m in metrics["metrics"].items()
    ]
    counts = metrics.get("counts", {})
    settings = metrics.get("settings", {})
    note = (
        f"Pairs: {counts.get('pairs')}; chosen shorter: {counts.get('chosen_shorter')}, chosen longer: "
        f"{counts.get('chosen_longer')}, equal length: {counts.get('equal_length')} (length in "
        f"{settings.get('length_unit', 'chars')}). Intervals: {settings.get('interval', 'bootstrap')}, "
        f"{settings.get('n_bootstrap')} resamples, seed {settings.get('seed')}. "
        "A direction that only measures length scores 0.5 on the length-balanced agreement."
    )
    return (
        _table(["metric", "value", "95% CI", "meaning"], rows, numeric={1, 2})
        + f'<p class="note">{_esc(note)}</p>'
        + _floor_section(metrics.get("random_floor"))
    )


def _floor_section(floor: dict[str, Any] | None) -> str:
    """The real metrics against the random-direction floor (or why there is none)."""
    if not floor:
        return (
            '<p class="note" id="random-floor">No random-direction floor: it needs the pairs\' embedding '
            "differences (<code>legend evaluate --direction</code>, or <code>legend report</code> with the "
            "direction folder available).</p>"
        )
    rows = [
        [
            name,
            _fmt(m["value"]),
            _fmt(m["floor"]),
            _fmt(m["random_mean"]),
            _fmt(m["random_max"]),
            "n/a" if m["percentile"] is None else f"{m['percentile']:.1f}",
        ]
        for name, m in floor["metrics"].items()
    ]
    lines = "; ".join(floor_line(floor, name) for name in floor["metrics"])
    note = (
        f"The null: {floor['n_directions']} random unit directions (seed {floor['seed']}) at the same layer and "
        f"pooling over the same {floor['n']} pairs. An agreement below the floor is what a random direction "
        f"gives: it is not evidence the margins measure safety. {lines}."
    )
    return (
        '<h3 id="random-floor">Against the random-direction floor</h3>'
        + _table(
            [
                "metric",
                "real",
                f"floor ({int(round(100 * floor['quantile']))}th pct)",
                "random mean",
                "random max",
                "real's percentile",
            ],
            rows,
            numeric={1, 2, 3, 4, 5},
        )
        + f'<p class="note">{_esc(note)}</p>'
    )


def _worst_section(labelled: LabelledMargins, levels: np.ndarray | None, count: int) -> str:
    order = np.argsort(labelled.raw, kind="stable")[:count]
    has_audit = "audit_score" in labelled.dataset.column_names
    audit_scores = labelled.dataset["audit_score"] if has_audit else []
    header = ["row", "margin_raw"] + (["level"] if levels is not None else []) + (["audit_score"] if has_audit else [])
    header += ["prompt (last user turn)", "chosen (labelled safer)", "rejected"]
    rows = []
    for i in order:
        view = labelled.views[i]
        row = [str(i + 1), _fmt(float(labelled.raw[i]))]
        row += [_fmt(float(levels[i]))] if levels is not None else []
        row += [_fmt(float(audit_scores[i]), 3)] if has_audit else []
        row += [snippet(_prompt_text(view)), snippet(view.chosen), snippet(view.rejected)]
        rows.append(row)
    numeric = set(range(len(header) - 3))
    return _table(header, rows, numeric)


def _sweep_table(rows: list[dict[str, Any]], top: int = 10) -> str:
    best = sorted(rows, key=lambda r: (-float(r["auc"]), -float(r["accuracy"])))[:top]
    return _table(
        ["layer", "pooling", "estimator", "held-out accuracy", "held-out AUC"],
        [
            [str(r["layer"]), str(r["pooling"]), str(r["estimator"]), _fmt(float(r["accuracy"])), _fmt(float(r["auc"]))]
            for r in best
        ],
        numeric={0, 3, 4},
    )


# ---------------------------------------------------------------- building


def read_sidecar(data: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata `legend annotate` wrote for `data` (`legend.annotation.find_sidecar`), if there is one."""
    from .annotation import read_sidecar as read_metadata

    return read_metadata(data)


def read_direction_config(
    direction: str | os.PathLike | None, sidecar: dict[str, Any] | None, notes: list[str]
) -> dict[str, Any] | None:
    """The direction's config.json: from `direction`, else the folder named in the sidecar, if it exists."""
    from .directions import CONFIG_FILE

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

    images = {name: out.with_name(f"{out.stem}_{name}.png") for name in figures}
    for name, png in figures.items():
        write_bytes_atomically(images[name], functools.partial(_write, png))
    page = _page(labelled, sidecar, config, metrics, rows, figures, levels, worst, notes)
    write_bytes_atomically(out, functools.partial(_write, page.encode("utf-8")))
    return ReportResult(html_path=out, images=images, metrics=metrics, notes=notes)


def _page(
    labelled: LabelledMargins,
    sidecar: dict[str, Any] | None,
    config: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    sweep: list[dict[str, Any]],
    figures: dict[str, bytes],
    levels: np.ndarray | None,
    worst: int,
    notes: list[str],
) -> str:
    raw = labelled.raw
    title = f"legend report: {Path(labelled.source).name}"
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    about = [["data", labelled.source], ["pairs", str(raw.size)], ["margin column", labelled.margin_column]]
    if config:
        about += [
            [
                "direction",
                f"{config.get('name')} ({config.get('estimator')}, layer {config.get('layer')}/"
                f"{config.get('num_layers')}, pooling {config.get('pooling')})",
            ],
            ["model", f"{config.get('model_id')} (fingerprint {config.get('fingerprint')})"],
        ]
    elif sidecar and sidecar.get("summary", {}).get("direction"):
        d = sidecar["summary"]["direction"]
        about += [
            [
                "direction",
                f"{d.get('name')} ({d.get('estimator')}, layer {d.get('layer')}, pooling {d.get('pooling')})",
            ],
            ["model", str(d.get("model_id"))],
        ]
    about.append(["generated", f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by legend {__version__}"])
    parts.append(_facts(about))
    parts += [f'<p class="note">{_esc(n)}</p>' for n in notes]

    parts.append("<h2>Margin distribution</h2>")
    q = np.quantile(raw, [0.1, 0.5, 0.9]) if raw.size else [float("nan")] * 3
    stats_rows = [
        ["pairs", str(raw.size)],
        ["share positive", f"{np.mean(raw > 0):.3f}"],
        ["mean ± std", f"{raw.mean():.4g} ± {raw.std():.4g}"],
        ["p10 / median / p90", f"{q[0]:.4g} / {q[1]:.4g} / {q[2]:.4g}"],
    ]
    edges = ((sidecar or {}).get("binning") or {}).get("edges")
    if edges:
        stats_rows.append(["level edges (raw)", ", ".join(f"{e:.4g}" for e in edges)])
    parts.append(_facts(stats_rows))
    parts.append(_image(figures["margins"], "histogram of raw margins and count per margin level"))

    parts.append("<h2>Agreement with the labels</h2>")
    if metrics:
        parts.append(_image(figures["agreement"], "agreement metrics with bootstrap intervals"))
        parts.append(_metrics_section(metrics))
    else:
        parts.append(
            '<p class="note">Not computed (--no-labels): the chosen answer is not taken to be the safer one.</p>'
        )
    parts.append(_image(figures["length"], "raw margin against the length difference"))

    parts.append("<h2>Layer × pooling × estimator sweep</h2>")
    if sweep:
        parts.append(_image(figures["sweep"], "held-out accuracy and AUC per layer for each pooling and estimator"))
        parts.append(
            f'<p class="note">{len(sweep)} configurations; the circled point is the one this direction uses. '
            "Best 10 by held-out AUC:</p>" + _sweep_table(sweep)
        )
    else:
        parts.append(
            '<p class="note">No sweep in this direction artifact (built with a fixed layer, pooling and '
            "estimator, or no direction folder given): build it with <code>legend direction --select auto"
            "</code> to see one.</p>"
        )

    count = min(worst, raw.size)
    parts.append(f"<h2>The {count} most negative margins</h2>")
    parts.append(
        '<p class="note">Here the direction says the rejected answer is the safer one: candidates for '
        "label errors (see <code>legend audit</code>) or for failures of the direction.</p>"
    )
    parts.append(f'<section id="worst-pairs">{_worst_section(labelled, levels, count)}</section>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
