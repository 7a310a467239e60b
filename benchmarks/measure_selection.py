"""Measure direction selection on the embedded SmolLM2 and the bundled hh-rlhf dev pairs (issue 5).

Stages (each reuses the previous one's cache under runs/selection/):

  cache    encode the hh-rlhf pairs (chosen and rejected) and the XSTest contrast pairs once, with
           every layer and both poolings captured in one pass each; saved with safetensors.
  measure  on the cached embeddings: the paper's default (last layer, last token, mean difference,
           XSTest direction), `--select auto` on the XSTest pairs, and `--select-on` with a seeded
           dev split of the hh pairs (reported on the held-out hh pairs only); for each, share of
           positive margins and chosen-vs-rejected AUC with bootstrap 95% intervals, raw and
           length-balanced, and the floor of random unit directions at the same layer/pooling.

    python benchmarks/measure_selection.py cache --dtype bfloat16
    python benchmarks/measure_selection.py measure --out runs/selection/results.json

CPU timings are noisy (shared 2-core machine); only the metrics matter here.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CACHE = Path("runs/selection")


def _key(layer: int, pooling: str) -> str:
    return f"L{layer}_{pooling}"


def stage_cache(args: argparse.Namespace) -> None:
    from legend.data import detect_layout, load_table, pair_views, read_contrast_pairs
    from legend.directions import embed_contrast_pairs
    from legend.encoding import EncodeConfig, encode, template_kind
    from legend.models import load_model
    from legend.resources import HH_RLHF_SAMPLE, XSTEST_PAIRS, sample_path

    CACHE.mkdir(parents=True, exist_ok=True)
    lm = load_model("default", dtype=args.dtype)
    torch.set_num_threads(args.threads)
    layers = tuple(range(lm.num_layers + 1))
    kind = template_kind(lm.tokenizer, "auto")
    config = EncodeConfig(
        layers=layers,
        poolings=("last", "mean"),
        template=kind,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        progress=True,
    )
    meta = {
        "model": "default",
        "dtype": args.dtype,
        "fingerprint": lm.fingerprint,
        "num_layers": lm.num_layers,
        "template": kind,
        "max_length": args.max_length,
    }

    if not (CACHE / "xstest.safetensors").is_file():
        pairs = read_contrast_pairs(sample_path(XSTEST_PAIRS))
        start = time.perf_counter()
        emb = embed_contrast_pairs(lm, pairs, config)
        tensors = {f"harmless_{_key(*k)}": v.contiguous() for k, v in emb.harmless.items()}
        tensors.update({f"harmful_{_key(*k)}": v.contiguous() for k, v in emb.harmful.items()})
        save_file(tensors, str(CACHE / "xstest.safetensors"), metadata={"meta": json.dumps(meta)})
        print(f"xstest: {len(pairs)} pairs in {time.perf_counter() - start:.1f} s", flush=True)

    table = load_table(sample_path(HH_RLHF_SAMPLE))
    views = pair_views(table, detect_layout(table, source="hh"), source="hh")
    limit = min(args.limit or len(views), len(views))
    tok = lm.tokenizer
    # Chunks of pairs, each saved on its own, so an interrupted run keeps what it finished.
    for first in range(0, limit, args.chunk):
        path = CACHE / f"hh_{first:05d}.safetensors"
        if path.is_file():
            continue
        chunk = views[first : min(first + args.chunk, limit)]
        items = [(v.prompt, v.chosen) for v in chunk] + [(v.prompt, v.rejected) for v in chunk]
        start = time.perf_counter()
        encoded = encode(lm, items, config)
        n = len(chunk)
        tensors = {f"chosen_{_key(*k)}": v[:n].contiguous() for k, v in encoded.vectors.items()}
        tensors.update({f"rejected_{_key(*k)}": v[n:].contiguous() for k, v in encoded.vectors.items()})
        # Answer lengths (characters and tokens) for the length-balanced metrics.
        tensors["chosen_chars"] = torch.tensor([len(v.chosen) for v in chunk])
        tensors["rejected_chars"] = torch.tensor([len(v.rejected) for v in chunk])
        tensors["chosen_tokens"] = torch.tensor(
            [len(tok(v.chosen, add_special_tokens=False)["input_ids"]) for v in chunk]
        )
        tensors["rejected_tokens"] = torch.tensor(
            [len(tok(v.rejected, add_special_tokens=False)["input_ids"]) for v in chunk]
        )
        tensors["identical"] = torch.tensor([v.chosen == v.rejected for v in chunk])
        tensors["row"] = torch.arange(first, first + n)
        chunk_meta = dict(
            meta,
            n_pairs=n,
            first_row=first,
            n_truncated=encoded.n_truncated,
            tokens=encoded.n_tokens,
            seconds=round(time.perf_counter() - start, 1),
        )
        save_file(tensors, str(path), metadata={"meta": json.dumps(chunk_meta)})
        print(f"hh rows {first}..{first + n - 1}: {encoded.n_tokens} tokens in {chunk_meta['seconds']} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    cache = sub.add_parser("cache")
    cache.add_argument("--dtype", default="bfloat16")
    cache.add_argument("--limit", type=int, default=None)
    cache.add_argument("--max-length", type=int, default=2048)
    cache.add_argument("--batch-size", type=int, default=16)
    cache.add_argument("--max-batch-tokens", type=int, default=8192)
    cache.add_argument("--threads", type=int, default=2)
    cache.add_argument("--chunk", type=int, default=50)
    measure = sub.add_parser("measure")
    measure.add_argument("--out", type=Path, default=CACHE / "results.json")
    measure.add_argument("--boot", type=int, default=1000)
    measure.add_argument("--random", type=int, default=20)
    measure.add_argument("--seed", type=int, default=0)
    measure.add_argument("--dev-fraction", type=float, default=0.5)
    args = parser.parse_args(argv)
    {"cache": stage_cache, "measure": stage_measure}[args.stage](args)


# ---------------------------------------------------------------- measure


def load_xstest() -> tuple[dict, dict, dict]:
    from safetensors import safe_open

    with safe_open(str(CACHE / "xstest.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
        harmless, harmful = {}, {}
        for name in f:
            side, key = name.split("_", 1)
            layer, pooling = key[1:].split("_")
            (harmless if side == "harmless" else harmful)[(int(layer), pooling)] = f.get_tensor(name)
    return harmless, harmful, meta


def load_hh() -> tuple[dict, dict, dict[str, torch.Tensor], dict]:
    """Concatenate the cached chunks in row order (the first N rows of the bundled dev file)."""
    chunks = sorted(CACHE.glob("hh_*.safetensors"))
    if not chunks:
        raise SystemExit("no cached hh chunks: run the cache stage first")
    parts = [load_file(str(path)) for path in chunks]
    rows = torch.cat([p["row"] for p in parts])
    if not torch.equal(rows, torch.arange(len(rows))):
        raise SystemExit("cached hh chunks are not contiguous from row 0")
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    chosen, rejected, other = {}, {}, {}
    for name, tensor in merged.items():
        side, _, key = name.partition("_")
        if key.startswith("L") and side in ("chosen", "rejected"):
            layer, pooling = key[1:].split("_")
            (chosen if side == "chosen" else rejected)[(int(layer), pooling)] = tensor
        else:
            other[name] = tensor
    from safetensors import safe_open

    with safe_open(str(chunks[0]), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    meta["n_pairs"] = len(rows)
    return chosen, rejected, other, meta


def margins_of(chosen, rejected, key, vector, identical) -> np.ndarray:
    raw = ((chosen[key].double() - rejected[key].double()) @ vector.double()).numpy()
    raw[identical] = 0.0  # as `legend annotate` does for identical answers
    return raw


def evaluate(raw, texts, idx, args) -> dict:
    """legend.quality's metrics (share positive, symmetric AUC, length-balanced agreement) with bootstrap CIs."""
    from legend.quality import evaluate_margins

    chosen_texts, rejected_texts = texts
    report = evaluate_margins(
        raw[idx],
        [chosen_texts[i] for i in idx],
        [rejected_texts[i] for i in idx],
        n_bootstrap=args.boot,
        seed=args.seed,
    )
    keep = (
        "share_positive",
        "auc",
        "agreement_length_balanced",
        "agreement_chosen_shorter",
        "agreement_chosen_longer",
        "length_spearman",
    )
    return {
        "n": report["n"],
        "counts": report["counts"],
        **{k: {m: report["metrics"][k][m] for m in ("value", "ci_low", "ci_high")} for k in keep},
    }


def random_floor(chosen, rejected, key, identical, texts, idx, n_random, seed) -> dict:
    """Best and mean agreement of random unit directions at one layer/pooling (point values only)."""
    from legend.quality import margin_metrics

    rng = np.random.default_rng(seed)
    chosen_texts, rejected_texts = texts
    length_diff = np.array([len(chosen_texts[i]) - len(rejected_texts[i]) for i in idx], dtype=np.float64)
    shares, aucs, balanced = [], [], []
    for _ in range(n_random):
        vector = torch.from_numpy(rng.normal(size=chosen[key].shape[1]))
        vector = vector / vector.norm()
        metrics = margin_metrics(margins_of(chosen, rejected, key, vector, identical)[idx], length_diff)
        shares.append(metrics["share_positive"])
        aucs.append(metrics["auc"])
        balanced.append(metrics["agreement_length_balanced"])
    return {
        "n_random": n_random,
        "share_positive_best": max(shares),
        "share_positive_mean": float(np.mean(shares)),
        "auc_best": max(aucs),
        "auc_mean": float(np.mean(aucs)),
        "length_balanced_best": max(balanced),
        "length_balanced_mean": float(np.mean(balanced)),
    }


def stage_measure(args: argparse.Namespace) -> None:
    from legend.data import detect_layout, load_table, pair_views
    from legend.directions import ESTIMATORS, ContrastEmbeddings, split_indices
    from legend.resources import HH_RLHF_SAMPLE, sample_path
    from legend.selection import all_candidates, best_row, select_on_preferences, sweep_embeddings

    x_harmless, x_harmful, x_meta = load_xstest()
    chosen, rejected, other, hh_meta = load_hh()
    n = hh_meta["n_pairs"]
    table = load_table(sample_path(HH_RLHF_SAMPLE)).select(range(n))
    views = pair_views(table, detect_layout(table, source="hh"), source="hh")
    texts = ([v.chosen for v in views], [v.rejected for v in views])
    identical = other["identical"].numpy().astype(bool)
    num_layers = x_meta["num_layers"]
    layers = tuple(range(1, num_layers + 1))
    everything = np.arange(n)
    dev, test = split_indices(n, 1.0 - args.dev_fraction, args.seed)
    contrast = ContrastEmbeddings(harmless=x_harmless, harmful=x_harmful, n_truncated=0)
    out: dict = {
        "model": "embedded SmolLM2-135M-Instruct (default)",
        "dtype": hh_meta["dtype"],
        "hh_pairs": n,
        "hh_source": "first rows of the bundled hh-rlhf harmless dev sample",
        "contrast_pairs": "bundled XSTest contrast pairs (131)",
        "dev": len(dev),
        "test": len(test),
        "bootstrap": args.boot,
        "seed": args.seed,
        "configs": {},
    }

    def report(label: str, layer: int, pooling: str, estimator: str, how: str) -> None:
        key = (layer, pooling)
        vector = ESTIMATORS[estimator](x_harmless[key], x_harmful[key])
        raw = margins_of(chosen, rejected, key, vector, identical)
        out["configs"][label] = {
            "layer": layer,
            "pooling": pooling,
            "estimator": estimator,
            "how": how,
            "all_pairs": evaluate(raw, texts, everything, args),
            "test_pairs": evaluate(raw, texts, test, args),
            "random_floor_all": random_floor(
                chosen, rejected, key, identical, texts, everything, args.random, args.seed
            ),
            "random_floor_test": random_floor(chosen, rejected, key, identical, texts, test, args.random, args.seed),
        }
        print(
            f"[{time.strftime('%H:%M:%S')}] {label}: layer {layer} {pooling} {estimator}: all "
            f"{_short(out['configs'][label]['all_pairs'])}; "
            f"test {_short(out['configs'][label]['test_pairs'])}",
            flush=True,
        )

    report("paper_default", num_layers, "last", "mean_difference", "the paper: last layer, last token, mean difference")

    auto = sweep_embeddings(
        contrast, all_candidates(layers, ("last", "mean"), tuple(ESTIMATORS)), test_fraction=0.2, seed=args.seed
    )
    out["select_auto_sweep_top"] = [r.to_dict() for r in sorted(auto.rows, key=_sort_key, reverse=True)[:10]]
    report(
        "select_auto",
        auto.best.layer,
        auto.best.pooling,
        auto.best.estimator,
        "--select auto on the XSTest pairs (held-out separation)",
    )

    # --select-on: choose on the hh dev split only; the held-out hh test split is the one to read.
    fitted: dict = {}  # candidate -> vector fitted on all XSTest pairs, shared by both select-on runs
    for label, estimators in (
        ("select_on_all", tuple(ESTIMATORS)),
        ("select_on_mean_difference", ("mean_difference",)),
    ):
        # The contrast sweep was already run above: reuse its rows (fresh copies) instead of refitting.
        rows = [copy.deepcopy(r) for r in auto.rows if r.estimator in estimators]
        result = dataclasses.replace(auto, rows=rows, best=best_row(rows))
        record = select_on_preferences(
            result, contrast, chosen, rejected, dev_fraction=args.dev_fraction, seed=args.seed, fitted=fitted
        )
        out[f"{label}_record"] = {k: v for k, v in record.items() if k != "test_rows"}
        report(
            label,
            result.best.layer,
            result.best.pooling,
            result.best.estimator,
            f"--select-on hh dev split ({len(dev)} pairs), estimators {', '.join(estimators)}",
        )

    # Descriptive layer profile (mean difference, XSTest direction) on all cached pairs: not used to choose.
    profile = []
    for layer in layers:
        for pooling in ("last", "mean"):
            key = (layer, pooling)
            raw = margins_of(
                chosen, rejected, key, ESTIMATORS["mean_difference"](x_harmless[key], x_harmful[key]), identical
            )
            from legend.quality import margin_metrics

            diff = np.array([len(c) - len(r) for c, r in zip(*texts)], dtype=np.float64)
            m = margin_metrics(raw, diff)
            profile.append(
                {
                    "layer": layer,
                    "pooling": pooling,
                    "share_positive": m["share_positive"],
                    "auc": m["auc"],
                    "length_balanced": m["agreement_length_balanced"],
                }
            )
    out["layer_profile_mean_difference"] = profile
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


def _sort_key(row):
    from legend.selection import _rank_key

    return _rank_key(row)


def _short(metrics: dict) -> str:
    def fmt(name):
        m = metrics[name]
        return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"

    return (
        f"n={metrics['n']} share+ {fmt('share_positive')}, AUC {fmt('auc')}, "
        f"length-balanced {fmt('agreement_length_balanced')}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
