"""The report's HTML: sections, tables and escaped texts (nothing from the data runs in the page)."""

from __future__ import annotations

import base64
import html
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..data import PairView
from ..quality import LabelledMargins, floor_line

SNIPPET_CHARS = 400


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


def render_page(
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
