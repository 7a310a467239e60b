"""The report's figures (matplotlib's object API, imported only when a figure is drawn)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn: ~1.2 s that annotate would pay for nothing
    from matplotlib.figure import Figure

SWEEP_KEYS = ("layer", "pooling", "estimator", "accuracy", "auc")


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
