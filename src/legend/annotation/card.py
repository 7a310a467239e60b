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

from ..errors import DataError
from ..io import atomic_path, file_lock
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


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else type(value).__name__


def card_parts(existing: str | None, source: str = CARD_FILE) -> tuple[dict[str, Any], str] | None:
    """An existing card's YAML front matter (as data) and its text, checked to be a card legend can update.

    Args:
        existing: the README.md text (None: there is none).
        source: the card's path, for errors.

    Returns:
        (front matter, text), or None when the README is not a dataset card (no front matter, no legend
        section: e.g. a project's README, which is left alone).

    Raises:
        DataError: naming the card and what is wrong: front matter that is not valid YAML, uses a Python
            tag (never constructed), is not a mapping, or whose `tags`, `legend` or `legend.files` is not
            what legend reads and writes there.
    """
    from huggingface_hub import RepoCard

    if existing is not None and not existing.startswith("---") and "<!-- legend:begin " not in existing:
        return None
    logging.getLogger("huggingface_hub.repocard").setLevel(logging.ERROR)  # "no metadata block" is expected
    try:
        card = RepoCard(existing or "# Preference data annotated by legend\n")
    except yaml.constructor.ConstructorError as err:
        tag = f" {err.problem.split()[-1]}" if err.problem and "tag" in err.problem else ""
        raise DataError(
            f"the YAML front matter uses a tag{tag} that legend does not construct (only plain YAML is read): remove "
            "it, or move the card away",
            source=source,
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = None if mark is None else mark.line + 2  # the file's line: the front matter starts after "---"
        where = f" (line {line}: {getattr(err, 'problem', '') or 'error'})" if line is not None else ""
        raise DataError(
            f"the YAML front matter is not valid YAML{where}: fix it, or move the card away", source=source
        ) from None
    except ValueError as err:  # huggingface_hub: the metadata block is not a mapping
        raise DataError(f"the YAML front matter is not a mapping ({err})", source=source) from None
    data = card.data.to_dict()
    tags = data.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise DataError(f"'tags' in the front matter is {_kind(tags)}: expected a list of strings", source=source)
    meta = data.get("legend")
    if meta is not None and not isinstance(meta, dict):
        raise DataError(
            f"'legend' in the front matter is {_kind(meta)}: expected a mapping (legend's entry, with 'files')",
            source=source,
        )
    files = (meta or {}).get("files")
    if files is not None and not isinstance(files, dict):
        raise DataError(
            f"'legend.files' in the front matter is {_kind(files)}: expected a mapping of file name to entry",
            source=source,
        )
    return data, card.text


def check_card(out: str | os.PathLike[str]) -> None:
    """Before any work: the dataset card beside `out` (if any) is one legend can update (`card_parts`), so a run
    never fails on it after the output is in place."""
    card = card_path(out)
    if not card.is_file():
        return
    try:
        existing = card.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason} at byte {err.start})", source=str(card)) from None
    card_parts(existing, str(card))


def merged_card(existing: str | None, document: dict[str, Any], source: str = CARD_FILE) -> str | None:
    """The README.md text with legend's YAML entry and section for this file added or replaced.

    Anything else in the card (the user's YAML keys, text, other files' sections) is kept. A README
    without YAML front matter and without a legend section is not a dataset card (e.g. a project's
    README): None, leave it alone. A card legend cannot update is a DataError (`card_parts`).
    """
    name = Path(document["output"]).name
    begin, end = _section_markers(name)
    parts = card_parts(existing, source)
    if parts is None:
        return None
    data, text = parts
    tags = list(data.get("tags") or [])
    data["tags"] = tags + [t for t in CARD_TAGS if t not in tags]
    meta = dict(data.get("legend") or {})
    meta["files"] = {**(meta.get("files") or {}), name: card_entry(document)}
    data["legend"] = meta
    section = card_section(document)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].removeprefix("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    front = yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n{text}"


def write_card(out: str | os.PathLike[str], document: dict[str, Any]) -> Path | None:
    """Add or update this file's entry in the dataset card beside it; the card's path, or None when an existing
    README.md is not a dataset card and was left alone.

    The card is read, changed and rewritten (atomically) under `legend.io.file_lock`, so runs writing
    other files of the same folder at the same time each keep their section.
    """
    card = card_path(out)
    with file_lock(card):
        existing = card.read_text(encoding="utf-8") if card.is_file() else None
        text = merged_card(existing, document, str(card))
        if text is None:
            log.warning(
                "%s has no YAML front matter (not a dataset card): left as it is, no legend section added", card
            )
            return None
        with atomic_path(card) as temporary:
            temporary.write_text(text, encoding="utf-8")
    return card
