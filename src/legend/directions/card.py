"""The model card (README.md) of a direction folder: YAML metadata for the Hub, then what it is and how to use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..models import model_source
from ..resources import shown_path

SEPARATION_CAVEAT = (
    "Held-out separation is measured on contrast pairs (the same kind of answers the direction was fitted "
    "on) and saturates easily; it is no evidence that the margins agree with preferences on real preference "
    "data. Check that with `legend evaluate` on labelled pairs."
)


def direction_card(direction: Any) -> str:
    """The README.md of a direction folder (`direction` is a `legend.directions.Direction`)."""
    d = direction
    import yaml

    meta: dict[str, Any] = {
        "library_name": "legend",
        "tags": ["legend", "representation-engineering", "safety", "preference-data"],
    }
    source = model_source(d.model_id)
    if "base_model" in source:  # the embedded model: its upstream Hub id, quantised
        meta["base_model"] = source["base_model"]
        meta["base_model_relation"] = "quantized"
    elif looks_like_repo_id(d.model_id) and not Path(d.model_id).exists():
        meta["base_model"] = d.model_id
    meta["legend"] = {
        "name": d.name,
        "model_id": d.model_id,
        "model_source": source,
        "fingerprint": d.fingerprint,
        "layer": d.layer,
        "num_layers": d.num_layers,
        "pooling": d.pooling,
        "estimator": d.estimator,
        "template": d.template,
        "hidden_size": d.hidden_size,
    }
    heldout = d.heldout
    separation = (
        f"accuracy {heldout['accuracy']:.3f}, AUC {heldout['auc']:.3f} on {heldout['n_test']} held-out "
        f"contrast pairs (trained on {heldout['n_train']}, seed {heldout.get('seed')})"
        if "accuracy" in heldout
        else "not measured (no held-out split)"
    )
    selection = d.extra.get("selection") or {}
    if selection.get("by") == "preferences":
        evaluation = (
            f"chosen by agreement with labelled preferences (`{selection.get('select_on')}`): share of positive "
            f"margins {_number(selection.get('test_share_positive'))}, AUC {_number(selection.get('test_auc'))} "
            f"on {selection.get('n_test')} held-out preference pairs"
        )
    elif d.extra.get("evaluation"):
        evaluation = json.dumps(d.extra["evaluation"], default=json_default)
    else:
        evaluation = "none recorded: run `legend evaluate` on labelled preference pairs before relying on it"
    shown = source.get("base_model", d.model_id)
    model_line = f"- model: `{d.model_id}`, weights fingerprint `{d.fingerprint}` (legend refuses other weights)"
    if "description" in source:
        model_line += f"; {source['description']}"
    recipe = d.extra.get("recipe")
    lines = [
        f"# `{d.name}`: a Legend safety direction for `{shown}`",
        "",
        "A unit vector in one layer's hidden space pointing from harmful to harmless answers, built by "
        "[legend](https://arxiv.org/abs/2406.08124) (Legend, Feng et al., AAAI 2025). Projecting "
        "e(prompt+chosen) - e(prompt+rejected) on it gives a preference pair's safety margin.",
        "",
        model_line,
        f"- recipe: {recipe}"
        + (" (the recommended recipe, see legend's docs/selection.md)" if recipe == "legend" else "")
        if recipe
        else "- recipe: custom settings",
        f"- layer {d.layer} of {d.num_layers} (hidden size {d.hidden_size}), pooling `{d.pooling}`, "
        f"estimator `{d.estimator}`, template `{d.template}`, max length {d.max_length}",
        f"- contrast data: {d.n_pairs} pairs{_pairs_files(d.extra.get('pairs_file'))}",
        f"- held-out separation: {separation}",
        *_selection_lines(d),
        f"- evaluation on preference data: {evaluation}",
        "",
        f"> {SEPARATION_CAVEAT}",
        "",
        "## How to use",
        "",
        "```bash",
        "pip install legend",
        "legend annotate --direction <this repo id or folder> --data prefs.jsonl --out prefs/train.jsonl",
        "```",
        "",
        "```python",
        "from legend.directions import Direction",
        "",
        'direction = Direction.from_pretrained("<this repo id or folder>")',
        "```",
        "",
        "Files: `d.safetensors` (the vector, key `direction`), `config.json` (how it was made).",
    ]
    front = yaml.safe_dump(json.loads(json.dumps(meta, default=json_default)), sort_keys=False)
    return f"---\n{front}---\n" + "\n".join(lines) + "\n"


def looks_like_repo_id(name: str) -> bool:
    """`user/name` as the Hub spells repo ids (huggingface_hub's own validation), not a path-like string."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def stability_sentence(selection: dict[str, Any], layer: int) -> str | None:
    """How stable the stable band rule's choice is, in words (the card and `legend direction` both say it).

    Args:
        selection: a direction's `extra["selection"]` (from `legend.selection.stable_band_choice`).
        layer: the chosen layer.

    Returns:
        The sentence, or None when the selection recorded no stability.

    >>> selection = {"n_resamples": 200, "band": [20, 21, 22, 23, 24], "evidence": {"prior_decided": True},
    ...     "stability": {"share_in_band": 1.0, "share_exact": 0.9, "range": [21, 22]}}
    >>> stability_sentence(selection, 22)[:75]
    '100% of 200 resamples of the contrast pairs choose a layer within 2 of 22 ('
    >>> stability_sentence(selection, 22).endswith("range 21-22); the evidence is flat across the candidate layers, \
so the prior depth decided")
    True
    """
    stability = selection.get("stability")
    if not stability:
        return None
    low, high = stability["range"]
    verdict = (
        "the evidence is flat across the candidate layers, so the prior depth decided"
        if (selection.get("evidence") or {}).get("prior_decided")
        else "one band is clearly best"
    )
    return (
        f"{stability['share_in_band']:.0%} of {selection.get('n_resamples')} resamples of the contrast pairs choose a "
        f"layer within {len(selection.get('band', [])) // 2} of {layer} ({stability['share_exact']:.0%} exactly; "
        f"range {low}-{high}); {verdict}"
    )


def _selection_lines(d: Any) -> list[str]:
    """How the layer was chosen, how stable the choice is, and what to be warned about (card lines)."""
    selection = d.extra.get("selection") or {}
    lines = []
    sentence = stability_sentence(selection, d.layer)
    if sentence:
        lines.append(
            f"- layer chosen by the stable band rule: {sentence}; candidates within one standard error: "
            f"{selection.get('candidates')}, prior depth {selection.get('prior')}"
        )
    lines += [f"- warning: {w}" for w in d.extra.get("warnings") or []]
    return lines


def _pairs_files(value: str | list[str] | None) -> str:
    """The contrast-pair file(s) as a card names them, after " from " (bundled ones by their place in the package)."""
    if not value:
        return ""
    return " from " + ", ".join(f"`{shown_path(v)}`" for v in ([value] if isinstance(value, str) else value))
