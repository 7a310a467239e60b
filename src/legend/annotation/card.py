"""The dataset card (README.md beside annotated data): legend's YAML entry and section per annotated file.

Anything else in the card (the user's YAML keys, text, other files' sections) is kept.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from ..io import atomic_path
from ..models import model_source

METADATA_FOLDER = ".legend"
CARD_FILE = "README.md"


def card_path(out: str | os.PathLike[str]) -> Path:
    """The dataset card of an annotated file: `README.md` in its folder.

    >>> str(card_path("prefs/train.jsonl"))
    'prefs/README.md'
    """
    return Path(out).parent / CARD_FILE


CARD_TAGS = ("legend", "safety-margin", "preference")
log = logging.getLogger("legend.annotation")


def _section_markers(name: str) -> tuple[str, str]:
    return f"<!-- legend:begin {name} -->", f"<!-- legend:end {name} -->"


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _numbers(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values or []) + "]"


def card_entry(document: dict[str, Any]) -> dict[str, Any]:
    """What the card's YAML records of one annotated file (`legend.files.<name>`): enough to use it."""
    summary = document.get("summary", {})
    direction = summary.get("direction", {})
    entry: dict[str, Any] = {
        "metadata": f"{METADATA_FOLDER}/{Path(document['output']).name}.json",
        "rows": summary.get("rows"),
        "layout": summary.get("layout"),
        "columns": {
            "margin_raw": "(e(prompt+chosen) - e(prompt+rejected)) . direction; > 0: chosen is safer",
            "margin": "margin_raw binned into levels (what TRL's RewardTrainer and OpenRLHF read)",
        },
        "direction": {**direction, "path": document.get("direction_path")},
        "model_id": summary.get("model_id"),
        "model_source": model_source(str(summary.get("model_id"))),
        "binning": {**document.get("binning", {}), "rule": document.get("binning_rule")},
        "legend_version": document.get("legend_version"),
    }
    for name, other in (document.get("other_binnings") or {}).items():
        entry["columns"][other["columns"][0]] = f"raw margin on direction {name!r}"
        entry["columns"][other["columns"][1]] = f"margin_raw_{name} binned with its own edges {other['edges']}"
    evidence = document.get("summary", {}).get("evidence")
    if evidence:
        entry["evidence"] = {
            "labels": evidence.get("labels"),
            "n": evidence.get("n"),
            "random_directions": evidence.get("random_directions"),
            "metrics": evidence.get("metrics"),
        }
    for key in ("evaluation", "audit"):
        if document.get(key):
            entry[key] = document[key]
    return entry


def card_section(document: dict[str, Any]) -> str:
    """The card's human-readable section on one annotated file (between legend's markers)."""
    entry = card_entry(document)
    name = Path(document["output"]).name
    direction = entry["direction"]
    binning = entry["binning"]
    begin, end = _section_markers(name)
    margin = document.get("summary", {}).get("margin_raw", {})
    lines = [
        begin,
        f"## `{name}`: safety margins by Legend",
        "",
        f"{entry['rows']} preference pairs ({entry['layout']} layout) annotated by "
        f"[legend](https://arxiv.org/abs/2406.08124) {entry['legend_version']}. Columns added:",
        "",
        *[f"- `{column}`: {meaning}" for column, meaning in entry["columns"].items()],
        f"- direction `{direction.get('name')}` from `{direction.get('path')}`: model "
        f"`{entry['model_source'].get('description', direction.get('model_id'))}` "
        f"(fingerprint `{direction.get('fingerprint')}`), layer {direction.get('layer')}, pooling "
        f"{direction.get('pooling')}, estimator {direction.get('estimator')}",
        f"- bin edges {_numbers(binning.get('edges'))} -> level values {_numbers(binning.get('values'))} "
        f"({binning.get('rule')}; "
        f"{document.get('binning_source', 'fitted')} on this file)",
    ]
    if margin.get("n"):
        lines.append(
            f"- margin_raw: share positive {margin['share_positive']:.3f}, median {margin['median']:.4g}, "
            f"p10 {margin['p10']:.4g}, p90 {margin['p90']:.4g}"
        )
    evidence = entry.get("evidence") or {}
    if evidence.get("metrics"):
        shown = ", ".join(
            f"{name} {m['value']:.3f} [{_number(m['ci_low'])}, {_number(m['ci_high'])}] vs floor {_number(m['floor'])}"
            + (" (above)" if m.get("above") else " (not above)")
            for name, m in evidence["metrics"].items()
            if m.get("value") is not None
        )
        lines.append(
            f"- agreement with {evidence.get('labels')} labels (chosen = preferred; {evidence.get('n')} pairs, 95% "
            f"bootstrap intervals; floor = 95th percentile of {evidence.get('random_directions')} random unit "
            f"directions at the same layer and pooling): {shown}"
        )
    evaluation = entry.get("evaluation") or {}
    if evaluation.get("metrics"):
        shown = ", ".join(
            f"{name} {m['value']:.3f} [{_number(m['ci_low'])}, {_number(m['ci_high'])}]"
            for name, m in evaluation["metrics"].items()
            if m.get("value") is not None
        )
        lines.append(
            f"- evaluation (`legend evaluate`, {evaluation.get('n')} labelled pairs, chosen = labelled safer, "
            f"{evaluation.get('confidence', 0.95):.0%} bootstrap intervals on `{evaluation.get('margin_column')}`): "
            f"{shown}"
        )
    lines += [
        f"- machine-readable metadata (bin edges, summary, settings): `{entry['metadata']}` "
        "(a hidden folder, which `datasets` does not read as data)",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'prefs = load_dataset("path/to/this/folder")  # or the Hub id; the `margin` column reaches the TRL loss',
        "```",
        "",
        "Re-use these bin edges on another split: `legend annotate ... --bins-from path/to/this/folder/" + name + "`.",
        end,
    ]
    return "\n".join(lines) + "\n"


def merged_card(existing: str | None, document: dict[str, Any]) -> str | None:
    """The README.md text with legend's YAML entry and section for this file added or replaced.

    Anything else in the card (the user's YAML keys, text, other files' sections) is kept. A README
    without YAML front matter and without a legend section is not a dataset card (e.g. a project's
    README): None, leave it alone.
    """
    from huggingface_hub import RepoCard

    name = Path(document["output"]).name
    begin, end = _section_markers(name)
    if existing is not None and not existing.startswith("---") and begin not in existing:
        return None
    logging.getLogger("huggingface_hub.repocard").setLevel(logging.ERROR)  # "no metadata block" is expected
    card = RepoCard(existing or "# Preference data annotated by legend\n")
    data = card.data.to_dict()
    tags = list(data.get("tags") or [])
    data["tags"] = tags + [t for t in CARD_TAGS if t not in tags]
    meta = dict(data.get("legend") or {})
    meta["files"] = {**(meta.get("files") or {}), name: card_entry(document)}
    data["legend"] = meta
    text = card.text
    section = card_section(document)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].removeprefix("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    front = yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n{text}"


def write_card(out: str | os.PathLike[str], document: dict[str, Any]) -> Path | None:
    """Add or update this file's entry in the dataset card beside it (atomically); the card's path, or None
    when an existing README.md is not a dataset card and was left alone."""
    card = card_path(out)
    existing = card.read_text(encoding="utf-8") if card.is_file() else None
    text = merged_card(existing, document)
    if text is None:
        log.warning("%s has no YAML front matter (not a dataset card): left as it is, no legend section added", card)
        return None
    with atomic_path(card) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return card
