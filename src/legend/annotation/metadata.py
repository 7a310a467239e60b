"""Where an annotated file's metadata lives, and reading and writing it (bin edges, summary, settings).

The JSON goes in a hidden `.legend/` folder beside the data, which `datasets.load_dataset(folder)`,
`trl reward --dataset_name folder` and the Hub's file resolution skip; the human-readable dataset
card (`card.py`) is `README.md` beside the data.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import DataError
from ..io import write_json
from ..margins import Binning
from .card import write_card
from .settings import BINNING_RULE, AnnotateSettings

METADATA_FOLDER = ".legend"  # `datasets` skips hidden folders when it resolves a folder's data files
CARD_FILE = "README.md"  # the dataset card: `datasets` and the Hub read its YAML, never as data
LEGACY_SIDECAR_SUFFIX = ".legend.json"  # where earlier versions put the metadata, beside the data: read, not written
SIDECAR_SUFFIX = LEGACY_SIDECAR_SUFFIX  # its old name (legend.pipeline exports it)
log = logging.getLogger("legend.annotation")


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
    """Write an annotated file's metadata JSON and its card entry (both atomically).

    The data is in place already, so a card that cannot be updated (changed since it was checked,
    a full disk) is a warning, not a failure.
    """
    paths = metadata_paths(out)
    write_json(document, paths.document)
    try:
        write_card(out, document)
    except (DataError, OSError) as err:
        from ..io import os_error_message

        reason = os_error_message(err) if isinstance(err, OSError) else str(err)
        log.warning("warning: the dataset card was not updated (%s); %s and its metadata are written", reason, out)
    return paths
