"""Annotation as a stage: its settings, its result, the columns it adds, its summary and its sidecar.

Both engines (legend.engines) and the in-memory `annotate` build their outputs from the functions
here, so the columns, the summary keys and the sidecar are defined once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import yaml

from . import __version__
from .data import DEFAULT_CHUNK_ROWS, ColumnNames, PairView, detect_layout, load_table, pair_views
from .directions import Direction
from .encoding import EncodeConfig
from .errors import DataError
from .io import atomic_path, write_json
from .margins import DEFAULT_LEVELS, Binning, MarginResult, check_directions_agree, compute_margins_multi, describe
from .models import LoadedModel, ModelSpec, as_loaded

MARGIN_COLUMNS = ("margin_raw", "margin")
# One direction (an object or its folder) or several, as `annotate` and the engines take them.
DirectionArg = Direction | str | os.PathLike[str] | Sequence[Direction | str | os.PathLike[str]]
METADATA_FOLDER = ".legend"  # `datasets` skips hidden folders when it resolves a folder's data files
CARD_FILE = "README.md"  # the dataset card: `datasets` and the Hub read its YAML, never as data
LEGACY_SIDECAR_SUFFIX = ".legend.json"  # where earlier versions put the metadata, beside the data: read, not written
SIDECAR_SUFFIX = LEGACY_SIDECAR_SUFFIX  # its old name (legend.pipeline exports it)
BINNING_RULE = "raw <= 0 -> lowest level; positive raw margins split into levels-1 equal-count groups"


@dataclass(frozen=True)
class MetadataPaths:
    """Where an annotated file's metadata goes: the machine-readable JSON, and the dataset card beside the data."""

    document: Path
    card: Path


def metadata_paths(out: str | os.PathLike[str]) -> MetadataPaths:
    """THE place that decides where the metadata of an annotated file `out` lives.

    The JSON (bin edges, summary, settings) goes in a hidden `.legend/` folder, which
    `datasets.load_dataset(folder)`, `trl reward --dataset_name folder` and the Hub's file
    resolution skip, and the human-readable card in `README.md` beside the data.

    >>> paths = metadata_paths("prefs/train.jsonl")
    >>> str(paths.document), str(paths.card)
    ('prefs/.legend/train.jsonl.json', 'prefs/README.md')
    """
    out = Path(out)
    return MetadataPaths(document=out.parent / METADATA_FOLDER / f"{out.name}.json", card=out.parent / CARD_FILE)


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    """The machine-readable metadata JSON of an annotated file (`metadata_paths(out).document`).

    >>> str(sidecar_path("runs/train.jsonl"))
    'runs/.legend/train.jsonl.json'
    """
    return metadata_paths(out).document


def legacy_sidecar_path(out: str | os.PathLike[str]) -> Path:
    """Where older versions wrote the metadata: `<out>.legend.json` (still read).

    >>> str(legacy_sidecar_path("runs/train.jsonl"))
    'runs/train.jsonl.legend.json'
    """
    return Path(str(out) + LEGACY_SIDECAR_SUFFIX)


def _is_metadata_file(path: Path) -> bool:
    return path.name.endswith(LEGACY_SIDECAR_SUFFIX) or (path.parent.name == METADATA_FOLDER and path.suffix == ".json")


def find_sidecar(path: str | os.PathLike[str]) -> Path | None:
    """The metadata JSON of annotated data, or None when there is none.

    `path` may be the metadata file itself (new or old), the annotated data file, or the folder
    holding it (which must then hold exactly one annotated file). The new location is tried first,
    then the old `<data>.legend.json`.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted((path / METADATA_FOLDER).glob("*.json")) + sorted(path.glob(f"*{LEGACY_SIDECAR_SUFFIX}"))
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ValueError(f"{path}: metadata of several annotated files ({names}); name the data file")
        return found[0] if found else None
    if path.is_file() and _is_metadata_file(path):
        return path
    return next((p for p in (sidecar_path(path), legacy_sidecar_path(path)) if p.is_file()), None)


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metadata document of annotated data (see `find_sidecar`), or None."""
    found = find_sidecar(path)
    if found is None:
        return None
    try:
        document = json.loads(found.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(f"not valid JSON ({err})", source=str(found)) from None
    if not isinstance(document, dict):
        raise DataError("expected a JSON object (legend's annotation metadata)", source=str(found))
    return document


def load_binning(path: str | os.PathLike[str]) -> Binning:
    """The bin edges of an earlier run, for `--bins-from`: its data file, folder or metadata (`find_sidecar`),
    old `.legend.json` sidecars, or a bare binning JSON."""
    found = find_sidecar(path)
    if found is None:
        if Path(path).is_file() and Path(path).suffix == ".json":
            return Binning.load(Path(path))  # a bare binning JSON, or metadata copied elsewhere
        raise FileNotFoundError(f"{path}: no legend metadata found (looked for {sidecar_path(path)})")
    return Binning.load(found)


@dataclass(frozen=True)
class AnnotateSettings:
    """Options of `annotate`: binning, columns, chunking, and the encoding settings (batching, sharing).

    Created once at the edge (CLI or API call), validated here, passed down, and saved in the
    sidecar. `encoding.max_length` None means the direction's; its layers, poolings and template are
    always the direction's.
    """

    levels: int | None = None  # None: the binning's, else as many as level_values, else DEFAULT_LEVELS
    level_values: tuple[float, ...] | None = None  # None: the binning's, else 0..levels-1
    binning: Binning | None = None  # re-use edges from an earlier run instead of fitting
    columns: ColumnNames = field(default_factory=ColumnNames)
    chunk_rows: int = DEFAULT_CHUNK_ROWS  # the file engines stream the input in chunks of this many rows
    encoding: EncodeConfig = field(default_factory=EncodeConfig)

    def __post_init__(self) -> None:
        levels, values = self.levels, self.level_values
        if self.binning is not None:  # given levels or values must say what the binning says (it wins otherwise)
            where = f" ({self.binning.source})" if self.binning.source else ""
            if levels is not None and levels != self.binning.levels:
                raise ValueError(
                    f"levels={levels} conflicts with the given binning{where}: {self.binning.levels} levels"
                )
            if values is not None and list(values) != list(self.binning.values):
                raise ValueError(
                    f"level_values={list(values)} conflict with the given binning{where}: {list(self.binning.values)}"
                )
            levels, values = self.binning.levels, tuple(self.binning.values)
        if levels is None:
            levels = len(values) if values is not None else DEFAULT_LEVELS
        if levels < 1:
            raise ValueError("levels must be at least 1")
        if values is not None and len(values) != levels:
            raise ValueError(f"{len(values)} level values given for {levels} levels")
        object.__setattr__(self, "levels", levels)  # frozen: resolved once, here
        object.__setattr__(self, "level_values", values)
        if self.chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")

    @property
    def n_levels(self) -> int:
        """The number of levels as resolved at construction (`levels` is never None afterwards)."""
        assert self.levels is not None
        return self.levels

    def to_dict(self) -> dict[str, Any]:
        """What the sidecar records of these settings."""
        data = dataclasses.asdict(self)
        data["binning"] = self.binning.to_dict() if self.binning else None
        data["encoding"] = {
            k: v
            for k, v in dataclasses.asdict(self.encoding).items()
            if k not in ("layers", "poolings", "template", "description")
        }
        return data


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


# ---------------------------------------------------------------- directions, columns, bins


def load_directions(direction: DirectionArg) -> tuple[list[Direction], Any]:
    """Directions (one, or a list) loaded from folders or Hub ids where needed, and their paths as recorded."""
    items: list[Any] = list(direction) if isinstance(direction, (list, tuple)) else [direction]
    if not items:
        raise ValueError("no direction given")
    paths = [None if isinstance(d, Direction) else str(d) for d in items]
    directions = [d if isinstance(d, Direction) else Direction.from_pretrained(d) for d in items]
    if len(directions) > 1:
        check_directions_agree(directions)
    return directions, paths if isinstance(direction, (list, tuple)) and len(items) > 1 else paths[0]


def margin_columns(directions: Sequence[Direction]) -> list[tuple[str, str]]:
    """(raw column, level column) per direction: `margin_raw`/`margin`, then `margin_raw_<name>`/`margin_<name>`."""
    return [MARGIN_COLUMNS] + [(f"margin_raw_{d.name}", f"margin_{d.name}") for d in directions[1:]]


def with_margins(
    chunk: datasets.Dataset, raws: Sequence[np.ndarray], binnings: Sequence[Binning], directions: Sequence[Direction]
) -> datasets.Dataset:
    """The rows with each direction's raw and binned margin columns (replacing any columns of those names)."""
    names = margin_columns(directions)
    chunk = chunk.remove_columns([c for pair in names for c in pair if c in chunk.column_names])
    for (raw_name, level_name), raw, binning in zip(names, raws, binnings):
        chunk = chunk.add_column(raw_name, raw.tolist()).add_column(level_name, binning.apply(raw).tolist())
    return chunk


def fit_binnings(raws: Sequence[np.ndarray], settings: AnnotateSettings) -> list[Binning]:
    """Each direction's own bin edges; edges given in `settings.binning` apply to the first direction only."""
    return [
        settings.binning if i == 0 and settings.binning else Binning.fit(raw, settings.n_levels, settings.level_values)
        for i, raw in enumerate(raws)
    ]


# ---------------------------------------------------------------- summary and sidecar


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


def sidecar_document(
    data: Any,
    out: Any,
    direction_path: Any,
    binning: Binning,
    settings: AnnotateSettings,
    summary: dict[str, Any],
    others: dict[str, Binning] | None = None,
) -> dict[str, Any]:
    """The machine-readable metadata of an annotated file (bin edges, summary, settings).

    `others`: name -> Binning of the directions after the first (`other_binnings`, with their columns).
    """
    document: dict[str, Any] = {
        "legend_version": __version__,
        "output": str(out),
        "input": str(data),
        "direction_path": direction_path,
        "binning": binning.to_dict(),
        "binning_rule": BINNING_RULE,
        "binning_source": "loaded" if settings.binning else "fitted",
        "summary": summary,
    }
    if others:
        document["other_binnings"] = {
            name: {"columns": [f"margin_raw_{name}", f"margin_{name}"], **b.to_dict()} for name, b in others.items()
        }
    return document


# ---------------------------------------------------------------- the dataset card

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
        "binning": {**document.get("binning", {}), "rule": document.get("binning_rule")},
        "legend_version": document.get("legend_version"),
    }
    for name, other in (document.get("other_binnings") or {}).items():
        entry["columns"][other["columns"][0]] = f"raw margin on direction {name!r}"
        entry["columns"][other["columns"][1]] = f"margin_raw_{name} binned with its own edges {other['edges']}"
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
        f"- direction `{direction.get('name')}` from `{direction.get('path')}`: model `{direction.get('model_id')}` "
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
    card = metadata_paths(out).card
    existing = card.read_text(encoding="utf-8") if card.is_file() else None
    text = merged_card(existing, document)
    if text is None:
        log.warning("%s has no YAML front matter (not a dataset card): left as it is, no legend section added", card)
        return None
    with atomic_path(card) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return card


EVALUATION_METRICS = ("share_positive", "auc", "agreement_length_balanced", "length_spearman", "severity_spearman")


def record_evaluation(data: str | os.PathLike[str], result: dict[str, Any]) -> Path | None:
    """Put `legend evaluate`'s headline metrics (with their intervals) in the metadata and card of annotated
    `data`; the metadata's path, or None when `data` has no legend metadata."""
    document = read_sidecar(data) if Path(data).is_file() else None
    if document is None:
        return None
    document["output"] = str(data)  # the file it describes (an older or hand-written sidecar may not say)
    metrics = result.get("metrics", {})
    document["evaluation"] = {
        "n": result.get("n"),
        "margin_column": result.get("margin_column"),
        "confidence": result.get("settings", {}).get("confidence"),
        "metrics": {
            name: {k: metrics[name].get(k) for k in ("value", "ci_low", "ci_high")}
            for name in EVALUATION_METRICS
            if name in metrics and metrics[name].get("value") is not None
        },
    }
    return write_metadata(data, document).document


def write_metadata(out: str | os.PathLike[str], document: dict[str, Any]) -> MetadataPaths:
    """Write an annotated file's metadata JSON and its card entry (both atomically)."""
    paths = metadata_paths(out)
    write_json(document, paths.document)
    write_card(out, document)
    return paths


# ---------------------------------------------------------------- in memory


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
    """
    settings = settings or AnnotateSettings()
    directions, _ = load_directions(direction)  # checked before reading data or loading the model
    if not isinstance(dataset, datasets.Dataset):
        source = source or str(dataset)
        dataset = load_table(dataset)
    source = source or "<dataset>"
    layout = detect_layout(dataset, settings.columns, source=source)
    views: list[PairView] = pair_views(dataset, layout, settings.columns, source=source)
    # Only now load the model: bad input fails in a second, not after loading weights.
    lm = as_loaded(model, fallback=directions[0].model_id)
    start = time.perf_counter()
    results = compute_margins_multi(lm, views, directions, settings.encoding)
    raws = [r.raw for r in results]
    binnings = fit_binnings(raws, settings)
    seconds = time.perf_counter() - start
    summary = annotation_summary(
        source, layout, results[0], binnings[0], directions[0], (lm.model_id, lm.dtype_name), seconds
    )
    if len(directions) > 1:
        summary["other_directions"] = other_directions_summary(directions, raws, binnings)
    return Annotation(
        dataset=with_margins(dataset, raws, binnings, directions),
        binning=binnings[0],
        summary=summary,
        margins=results[0],
        secondary=secondary_of(directions, results, binnings),
    )
