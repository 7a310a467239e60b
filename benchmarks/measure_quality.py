"""Real-data measurement for docs/quality.md: encode once (all layers, last+mean pooling), cache, measure.

Usage: .venv/bin/python benchmarks/measure_quality.py N_PAIRS  (writes to runs/quality/, git-ignored)
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from legend.audit import simulate_flips
from legend.data import detect_layout, load_table, pair_views, read_contrast_pairs
from legend.directions import Direction, embed_contrast_pairs, fit_direction_vector
from legend.encoding import EncodeConfig, encode, template_kind
from legend.io import write_json, write_table
from legend.margins import Binning, project
from legend.models import load_model
from legend.pipeline import sidecar_path
from legend.quality import evaluate_margins
from legend.resources import HH_RLHF_SAMPLE, XSTEST_PAIRS, sample_path

OUT = Path("runs/quality")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 400
t0 = time.time()
lm = load_model("default", dtype="bfloat16")
layers = tuple(range(lm.num_layers + 1))
kind = template_kind(lm.tokenizer, "auto")
config = EncodeConfig(layers=layers, poolings=("last", "mean"), template=kind, max_length=2048, batch_size=16)

xs_cache = OUT / "xstest_emb.pt"
if xs_cache.exists():
    xs = torch.load(xs_cache)
else:
    pairs = read_contrast_pairs(sample_path(XSTEST_PAIRS))
    emb = embed_contrast_pairs(lm, pairs, config)
    xs = {"harmless": emb.harmless, "harmful": emb.harmful, "n": len(pairs)}
    torch.save(xs, xs_cache)
print(f"xstest encoded/loaded at {time.time() - t0:.0f} s", flush=True)

table = load_table(sample_path(HH_RLHF_SAMPLE))
table = table.select(range(min(N, len(table))))
source = str(sample_path(HH_RLHF_SAMPLE))
views = pair_views(table, detect_layout(table, source=source), source=source)
hh_cache = OUT / f"hh_emb_{N}.pt"
if hh_cache.exists():
    hh = torch.load(hh_cache)
else:
    start = time.time()
    items = [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views]
    enc = encode(lm, items, config)
    hh = {
        "chosen": {k: v[:N] for k, v in enc.vectors.items()},
        "rejected": {k: v[N:] for k, v in enc.vectors.items()},
        "seconds": time.time() - start,
        "n_tokens": enc.n_tokens,
        "n_truncated": enc.n_truncated,
    }
    torch.save(hh, hh_cache)
print(f"hh encoded/loaded at {time.time() - t0:.0f} s (encode {hh['seconds']:.0f} s)", flush=True)
identical = np.array([v.chosen == v.rejected for v in views])
chosen_texts, rejected_texts = [v.chosen for v in views], [v.rejected for v in views]


def direction_for(layer, pooling, estimator="mean_difference"):
    vector, heldout = fit_direction_vector(xs["harmless"][(layer, pooling)], xs["harmful"][(layer, pooling)], estimator)
    return Direction(
        vector=vector,
        layer=layer,
        pooling=pooling,
        model_id=lm.model_id,
        fingerprint=lm.fingerprint,
        hidden_size=lm.hidden_size,
        num_layers=lm.num_layers,
        template=kind,
        estimator=estimator,
        n_pairs=xs["n"],
        heldout=heldout,
        extra={"pairs_file": str(sample_path(XSTEST_PAIRS))},
    )


def margins(layer, pooling, vector):
    raw = project(hh["chosen"][(layer, pooling)], hh["rejected"][(layer, pooling)], vector)
    raw[identical] = 0.0
    return raw


def write_annotated(name, direction, raw):
    folder = OUT / f"dir_{name}"
    direction.save(folder)
    binning = Binning.fit(raw)
    annotated = table.add_column("margin_raw", raw.tolist()).add_column("margin", binning.apply(raw).tolist())
    path = OUT / f"hh_{name}_{N}.jsonl"
    write_table(annotated, path)
    write_json(
        {
            "input": source,
            "direction_path": str(folder),
            "binning": binning.to_dict(),
            "summary": {
                "direction": {
                    "name": "safety",
                    "model_id": lm.model_id,
                    "layer": direction.layer,
                    "pooling": direction.pooling,
                    "estimator": direction.estimator,
                }
            },
            "note": "margins projected from cached embeddings by runs/quality/measure.py",
        },
        sidecar_path(path),
    )
    return path


results = {
    "n_pairs": N,
    "model": lm.model_id,
    "dtype": "bfloat16",
    "identical_pairs": int(identical.sum()),
    "hh_encode_seconds": hh["seconds"],
    "hh_tokens": hh["n_tokens"],
    "hh_truncated": hh["n_truncated"],
    "configs": {},
    "grid": [],
    "random_floor": {},
}
CONFIGS = {"default": (lm.num_layers, "last"), "mean_last_layer": (lm.num_layers, "mean"), "mean_layer20": (20, "mean")}
for name, (layer, pooling) in CONFIGS.items():
    direction = direction_for(layer, pooling)
    raw = margins(layer, pooling, direction.vector)
    path = write_annotated(name, direction, raw)
    metrics = evaluate_margins(raw, chosen_texts, rejected_texts, n_bootstrap=2000, seed=0)
    flips = [simulate_flips(raw, 0.1, seed=s) for s in range(10)]
    results["configs"][name] = {
        "layer": layer,
        "pooling": pooling,
        "xstest_heldout": direction.heldout,
        "annotated": str(path),
        "metrics": {k: [m["value"], m["ci_low"], m["ci_high"]] for k, m in metrics["metrics"].items()},
        "counts": metrics["counts"],
        "audit_seed0": {
            k: flips[0][k] for k in ("precision", "recall", "base_rate", "flagged", "flipped", "average_precision")
        },
        "audit_10_seeds": {
            k: [float(np.mean([f[k] for f in flips])), float(np.std([f[k] for f in flips]))]
            for k in ("precision", "recall", "average_precision", "flagged")
        },
    }
    print(name, json.dumps(results["configs"][name]["metrics"]), results["configs"][name]["audit_10_seeds"], flush=True)

for layer in layers:
    for pooling in ("last", "mean"):
        try:
            direction = direction_for(layer, pooling)
        except ValueError as err:  # layer 0, last token: the same end token on both sides
            results["grid"].append({"layer": layer, "pooling": pooling, "error": str(err)})
            continue
        raw = margins(layer, pooling, direction.vector)
        m = evaluate_margins(raw, chosen_texts, rejected_texts, n_bootstrap=0)["metrics"]
        results["grid"].append(
            {
                "layer": layer,
                "pooling": pooling,
                "xstest_heldout_acc": direction.heldout.get("accuracy"),
                "share_positive": m["share_positive"]["value"],
                "auc": m["auc"]["value"],
                "balanced": m["agreement_length_balanced"]["value"],
                "length_spearman": m["length_spearman"]["value"],
            }
        )

rng = np.random.default_rng(0)
for name, (layer, pooling) in CONFIGS.items():
    shares, balanced, aucs = [], [], []
    for _ in range(200):
        v = torch.tensor(rng.normal(size=lm.hidden_size), dtype=torch.float32)
        raw = margins(layer, pooling, v / v.norm())
        m = evaluate_margins(raw, chosen_texts, rejected_texts, n_bootstrap=0)["metrics"]
        shares.append(m["share_positive"]["value"]), balanced.append(m["agreement_length_balanced"]["value"])
        aucs.append(m["auc"]["value"])

    # A random direction's sign is arbitrary: agreement a and 1 - a are equally likely, so report |a - 0.5| + 0.5.
    def fold(xs_):
        return np.abs(np.asarray(xs_) - 0.5) + 0.5

    results["random_floor"][name] = {
        k: {"median": float(np.median(fold(v))), "p95": float(np.quantile(fold(v), 0.95)), "max": float(fold(v).max())}
        for k, v in (("share_positive", shares), ("balanced", balanced), ("auc", aucs))
    }
print("random floor", json.dumps(results["random_floor"]), flush=True)
write_json(results, OUT / f"measure_{N}.json")
print(f"done in {time.time() - t0:.0f} s", flush=True)
