"""Do Legend margins help a reward model? Cross-fitted comparison on the 1,101 bundled hh-rlhf dev pairs.

The paper's experiment (issue 9, part 5): same backbone, seed, steps and data for plain Bradley–Terry,
Legend margins and RewardEnsemble@K margins, loss `-log σ(r_c − r_r − α·m)`. Every pair is scored
exactly once, by a model trained on the other k−1 folds (cross-fitting), so accuracies are pooled
over all 1,101 out-of-fold predictions, with bootstrap 95% CIs and PAIRED bootstrap CIs of each
difference to Bradley–Terry (same resampled pairs; `legend.metrics`).

Affordable on a CPU: the backbone (embedded SmolLM2-135M-Instruct) is frozen below the trainable top,
so its states are computed ONCE per text and cached (`legend.rewards.cached`): the reward model is the
product's `legend train-rm --train-layers 0` (final norm + reward head trained, everything below
frozen), read at the last token after the whole response (the final `<|im_end|>`), tokenised by
legend exactly as `train-rm` does. The same single encoding pass also captures the hidden states the
Legend margins need (annotation is inference: no labels are used, so margins exist for every row).

Stages (each resumable, under --work, git-ignored runs/ by default):

  encode   one pass over the 2,202 hh texts (+ the XSTest contrast pairs), every layer, last+mean
           pooling, plus the reward features; saved per chunk (a killed run resumes at its chunk).
  grid     the runs: conditions × seeds × α × folds; one JSON line per finished (run, fold).
  table    accuracies, CIs, paired differences; prints a markdown table (and --json).

    nice -n 10 python benchmarks/bench_rewards.py encode                      # the whole cost; resumable
    nice -n 10 python benchmarks/bench_rewards.py grid                        # ~12 s CPU for the grid
    python benchmarks/bench_rewards.py table --json runs/bench_rewards/table.json

The Legend recipe is a parameter: `--recipe-layer/--recipe-pooling/--recipe-estimator` on the
bundled XSTest pairs (default: layer 25, mean pooling, mean difference), or `--direction DIR`, a
saved direction artifact (`legend direction --out DIR`), projected from the cache when its
layer/pooling/template/max_length match it, else annotated with `legend.annotation.annotate`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WORK = Path("runs/bench_rewards")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _key(layer: int, pooling: str) -> str:
    return f"L{layer}_{pooling}"


def hh_views() -> list[Any]:
    from legend.data import detect_layout, load_table, pair_views
    from legend.resources import HH_RLHF_SAMPLE, sample_path

    source = str(sample_path(HH_RLHF_SAMPLE))
    table = load_table(source)
    return pair_views(table, detect_layout(table, source=source), source=source)


def encode_config(args: argparse.Namespace, num_layers: int) -> Any:
    from legend.encoding import EncodeConfig

    return EncodeConfig(
        layers=tuple(range(1, num_layers + 1)),
        poolings=("last", "mean"),
        template="auto",
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
    )


def stage_encode(args: argparse.Namespace) -> None:
    """Encode every hh text (chosen, rejected) and the XSTest pairs once; one safetensors file per chunk."""
    from legend.data import read_contrast_pairs
    from legend.directions import embed_contrast_pairs
    from legend.encoding import template_kind
    from legend.io import atomic_path, write_json
    from legend.models import load_model
    from legend.resources import XSTEST_PAIRS, sample_path
    from legend.rewards.cached import final_norm_weight, head_features

    work = Path(args.work)
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    views = hh_views()
    lm = load_model(args.model, dtype="float32")
    config = encode_config(args, lm.num_layers)
    log(f"{len(views)} pairs, {lm.num_layers} layers, template {template_kind(lm.tokenizer, 'auto')}")
    meta = {
        "model": args.model,
        "model_id": lm.model_id,
        "fingerprint": lm.fingerprint,
        "num_layers": lm.num_layers,
        "hidden_size": lm.hidden_size,
        "template": template_kind(lm.tokenizer, "auto"),
        "max_length": args.max_length,
        "pairs": len(views),
        "chunk": args.chunk,
        "norm_weight": final_norm_weight(lm).tolist(),
    }
    write_json(meta, work / "cache.json")  # first, so that `grid --allow-partial` can read a running cache
    xs_file = work / "xstest.safetensors"
    if not xs_file.exists():
        pairs = read_contrast_pairs(sample_path(XSTEST_PAIRS))
        start = time.perf_counter()
        emb = embed_contrast_pairs(lm, pairs, config)
        tensors = {f"harmless_{_key(*k)}": v.half() for k, v in emb.harmless.items()}
        tensors.update({f"harmful_{_key(*k)}": v.half() for k, v in emb.harmful.items()})
        with atomic_path(xs_file) as tmp:
            save_file(tensors, str(tmp))
        log(f"XSTest: {len(pairs)} pairs encoded in {time.perf_counter() - start:.0f} s")
    n_chunks = (len(views) + args.chunk - 1) // args.chunk
    total = 0.0
    for c in range(n_chunks):
        path = work / "chunks" / f"{c:04d}.safetensors"
        if path.exists():
            continue
        chunk = views[c * args.chunk : (c + 1) * args.chunk]
        start = time.perf_counter()
        items = [(v.prompt, v.chosen) for v in chunk] + [(v.prompt, v.rejected) for v in chunk]
        feats = head_features(lm, items, config)
        n = len(chunk)
        tensors = {}
        for (layer, pooling), value in feats.encoded.vectors.items():
            tensors[f"chosen_{_key(layer, pooling)}"] = value[:n].half()
            tensors[f"rejected_{_key(layer, pooling)}"] = value[n:].half()
        tensors["chosen_head"], tensors["rejected_head"] = feats.normalized[:n], feats.normalized[n:]
        tensors["truncated"] = torch.tensor(feats.encoded.truncated, dtype=torch.int8)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        seconds = time.perf_counter() - start
        total += seconds
        log(f"chunk {c + 1}/{n_chunks}: {n} pairs, {feats.encoded.n_tokens} tokens, {seconds:.0f} s")
    meta["encode_seconds_last_call"] = round(total, 1)
    write_json(meta, work / "cache.json")
    log("encode done")


# ---------------------------------------------------------------------------------------------- grid


def load_cache(work: Path, allow_partial: bool = False) -> dict[str, Any]:
    """The cached states; with `allow_partial`, the leading complete chunks of an unfinished encode stage."""
    meta = json.loads((work / "cache.json").read_text())
    parts: dict[str, list[torch.Tensor]] = {}
    n_chunks = (meta["pairs"] + meta["chunk"] - 1) // meta["chunk"]
    for c in range(n_chunks):
        path = work / "chunks" / f"{c:04d}.safetensors"
        if not path.exists():
            if allow_partial and c > 0:
                break
            raise SystemExit(f"cache incomplete ({path} missing): run the encode stage again")
        for key, value in load_file(str(path)).items():
            parts.setdefault(key, []).append(value)
    tensors = {key: torch.cat(values) for key, values in parts.items()}
    return {"meta": meta, "hh": tensors, "xstest": load_file(str(work / "xstest.safetensors"))}


def recipe_margins(args: argparse.Namespace, cache: dict[str, Any], views: list[Any]) -> tuple[np.ndarray, dict]:
    """Raw Legend margins of every pair (inference only: no preference label is read)."""
    from legend.directions import Direction, fit_direction_vector
    from legend.encoding import resolve_layer
    from legend.metrics import project

    meta, hh = cache["meta"], cache["hh"]
    identical = np.array([v.chosen == v.rejected for v in views])
    if args.direction:
        direction = Direction.load(args.direction)
        key = _key(resolve_layer(direction.layer, meta["num_layers"]), direction.pooling)
        recipe = {
            "direction": str(args.direction),
            "layer": direction.layer,
            "pooling": direction.pooling,
            "estimator": direction.estimator,
            "n_pairs": direction.n_pairs,
        }
        if (
            f"chosen_{key}" in hh
            and direction.template == meta["template"]
            and direction.max_length == meta["max_length"]
        ):
            vector = direction.vector
        else:  # another encoding than the cache's: annotate with the product path (its own pass)
            return annotate_margins(args, direction, views), {**recipe, "source": "legend.annotation.annotate"}
    else:
        key = _key(args.recipe_layer, args.recipe_pooling)
        xs = cache["xstest"]
        vector, heldout = fit_direction_vector(
            xs[f"harmless_{key}"].float(), xs[f"harmful_{key}"].float(), args.recipe_estimator
        )
        recipe = {
            "direction": "bundled XSTest contrast pairs",
            "layer": args.recipe_layer,
            "pooling": args.recipe_pooling,
            "estimator": args.recipe_estimator,
            "heldout_accuracy_xstest": heldout.get("accuracy"),
        }
    raw = project(hh[f"chosen_{key}"].float(), hh[f"rejected_{key}"].float(), vector)
    raw[identical] = 0.0  # as compute_margins_multi: identical texts get exactly 0
    return raw, {**recipe, "source": "cache", "max_length": meta["max_length"]}


def annotate_margins(args: argparse.Namespace, direction: Any, views: list[Any]) -> np.ndarray:
    from legend.margins import compute_margins_multi
    from legend.models import load_model

    path = Path(args.work) / f"margins_{Path(args.direction).name}.npy"
    if path.exists():
        return np.load(path)
    log(f"annotating {len(views)} pairs with {args.direction} (product path)")
    (result,) = compute_margins_multi(load_model(args.model), views, [direction])
    np.save(path, result.raw)
    return result.raw


def random_margins(cache: dict[str, Any], layer: int, pooling: str, seed: int) -> np.ndarray:
    """Null: margins from a random unit direction at the recipe's layer and pooling."""
    from legend.metrics import project

    hh = cache["hh"]
    vector = torch.from_numpy(np.random.default_rng(10_000 + seed).standard_normal(hh["chosen_head"].shape[1]))
    vector = vector / vector.norm()
    key = _key(layer, pooling)
    return project(hh[f"chosen_{key}"].float(), hh[f"rejected_{key}"].float(), vector.float())


def runs_to_do(args: argparse.Namespace) -> list[tuple[str, float, int]]:
    """(condition, alpha, seed): every condition at α=1 for each seed, plus the extra α on the first seed."""
    runs = [("bt", 0.0, seed) for seed in args.seeds]
    for condition in args.conditions:
        runs += [(condition, 1.0, seed) for seed in args.seeds]
        runs += [(condition, alpha, args.seeds[0]) for alpha in args.extra_alphas]
    return runs


def stage_grid(args: argparse.Namespace) -> None:
    from legend.margins import Binning
    from legend.metrics import bootstrap_mean_ci
    from legend.rewards.cached import CachedHeadSettings, train_cached_head
    from legend.rewards.ensemble import kfold

    work = Path(args.work)
    torch.set_num_threads(args.threads)  # tiny matrices: one thread beats two on a busy machine
    cache = load_cache(work, args.allow_partial)
    n = cache["hh"]["chosen_head"].shape[0]
    views = hh_views()[:n]  # all 1,101 unless --allow-partial on an unfinished cache
    raw_legend, recipe = recipe_margins(args, cache, views)
    # Context only (never used in training): how often the margins agree with the hh labels.
    agree = (raw_legend > 0).astype(float)
    recipe["hh_share_positive"] = [round(float(agree.mean()), 4), [round(x, 4) for x in bootstrap_mean_ci(agree)]]
    chosen, rejected = cache["hh"]["chosen_head"], cache["hh"]["rejected_head"]
    gain = torch.tensor(cache["meta"]["norm_weight"], dtype=torch.float32)
    folds = kfold(n, args.k, args.fold_seed)
    head = {"learning_rate": args.lr, "epochs": args.epochs, "batch_size": args.train_batch_size}
    config = {
        "pairs": n,
        "recipe": recipe,
        "head": head,
        "k": args.k,
        "fold_seed": args.fold_seed,
        "ensemble_k": args.ensemble_k,
        "levels": args.levels,
        "bins": "fitted on the training folds",
    }
    out = work / f"grid_{args.tag}.jsonl"
    done: set[tuple[str, float, int, int]] = set()
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            if row["config"] != config:
                raise SystemExit(f"{out} holds runs of another configuration; use another --tag")
            done.add((row["condition"], row["alpha"], row["seed"], row["fold"]))
    log(f"recipe {recipe}; {len(done)} (run, fold) already in {out}")
    ensemble_cache: dict[tuple[int, int], np.ndarray] = {}

    def settings(seed: int) -> CachedHeadSettings:
        return CachedHeadSettings(
            learning_rate=args.lr, epochs=args.epochs, batch_size=args.train_batch_size, seed=seed
        )

    def ensemble_gaps(seed: int, fold: int, train_rows: np.ndarray) -> tuple[np.ndarray, float]:
        """RewardEnsemble@K on the training folds only: out-of-fold gaps of K plain-BT heads."""
        start = time.perf_counter()
        if (seed, fold) not in ensemble_cache:
            gaps = np.zeros(len(train_rows))
            for inner in kfold(len(train_rows), args.ensemble_k, args.fold_seed + 1 + fold):
                fit_rows = train_rows[np.setdiff1d(np.arange(len(train_rows)), inner)]
                trained = train_cached_head(chosen[fit_rows], rejected[fit_rows], gain, None, settings(seed))
                rows = train_rows[inner]
                gaps[inner] = trained.score(chosen[rows]) - trained.score(rejected[rows])
            ensemble_cache[(seed, fold)] = gaps
        return ensemble_cache[(seed, fold)], time.perf_counter() - start

    with open(out, "a", encoding="utf-8") as sink:
        for condition, alpha, seed in runs_to_do(args):
            for fold, test_rows in enumerate(folds):
                if (condition, alpha, seed, fold) in done:
                    continue
                train_rows = np.setdiff1d(np.arange(n), test_rows)
                margin_seconds = 0.0
                if condition == "bt":
                    raw = None
                elif condition == "legend":
                    raw = raw_legend[train_rows]
                elif condition == "random":
                    raw = random_margins(cache, recipe["layer"], recipe["pooling"], seed)[train_rows]
                else:
                    raw, margin_seconds = ensemble_gaps(seed, fold, train_rows)
                margins = None
                if raw is not None:
                    binning = Binning.fit(raw, args.levels)  # bins from the training folds only
                    margins = alpha * binning.apply(raw)
                start = time.perf_counter()
                trained = train_cached_head(chosen[train_rows], rejected[train_rows], gain, margins, settings(seed))
                gap = trained.score(chosen[test_rows]) - trained.score(rejected[test_rows])
                row = {
                    "condition": condition,
                    "alpha": alpha,
                    "seed": seed,
                    "fold": fold,
                    "rows": test_rows.tolist(),
                    # the test pairs' Legend levels under this fold's bins (for the by-level table)
                    "test_levels": Binning.fit(raw_legend[train_rows], args.levels)
                    .level(raw_legend[test_rows])
                    .tolist(),
                    "gap": gap.tolist(),
                    "train_seconds": round(time.perf_counter() - start, 3),
                    "margin_seconds": round(margin_seconds, 3),
                    "final_loss": float(np.mean(trained.losses[-20:])),
                    "steps": trained.steps,
                    "config": config,
                }
                sink.write(json.dumps(row) + "\n")
                sink.flush()
            log(f"{condition} alpha={alpha} seed={seed}: done")
    log("grid done")


# --------------------------------------------------------------------------------------------- table

NAMES = {
    "bt": "Bradley–Terry",
    "legend": "Legend margins",
    "ensemble": "RewardEnsemble@K margins",
    "random": "random-direction margins (null)",
}


def stage_table(args: argparse.Namespace) -> None:
    from legend.io import write_json
    from legend.metrics import bootstrap_mean_ci, paired_difference_ci

    work = Path(args.work)
    rows = [json.loads(line) for line in (work / f"grid_{args.tag}.jsonl").read_text().splitlines()]
    n = max(max(r["rows"]) for r in rows) + 1
    correct: dict[tuple[str, float, int], np.ndarray] = {}
    seconds: dict[tuple[str, float, int], float] = {}
    for r in rows:
        key = (r["condition"], r["alpha"], r["seed"])
        target = correct.setdefault(key, np.full(n, np.nan))
        target[r["rows"]] = (np.asarray(r["gap"]) > 0).astype(float)  # ties count as wrong, as eval-rm
        seconds[key] = seconds.get(key, 0.0) + r["train_seconds"] + r["margin_seconds"]
    complete = {k: v for k, v in correct.items() if not np.isnan(v).any()}
    seeds = sorted({k[2] for k in complete})
    table: list[dict[str, Any]] = []
    for key in sorted(complete, key=lambda k: (list(NAMES).index(k[0]), k[1], k[2])):
        condition, alpha, seed = key
        values = complete[key]
        entry: dict[str, Any] = {
            "condition": condition,
            "alpha": alpha,
            "seed": seed,
            "n": int(values.size),
            "accuracy": float(values.mean()),
            "ci95": bootstrap_mean_ci(values),
            "seconds": round(seconds[key], 2),
        }
        base = complete.get(("bt", 0.0, seed))
        if condition != "bt" and base is not None:
            entry["delta_vs_bt"] = float(values.mean() - base.mean())
            entry["delta_ci95"] = paired_difference_ci(values, base)
        table.append(entry)
    # Mean over seeds (α = 1): per-pair share of seeds right, then the same bootstrap over pairs.
    pooled: list[dict[str, Any]] = []
    for condition in NAMES:
        keys = [(condition, 0.0 if condition == "bt" else 1.0, s) for s in seeds]
        if all(k in complete for k in keys) and len(keys) > 1:
            values = np.mean([complete[k] for k in keys], axis=0)
            base = np.mean([complete[("bt", 0.0, s)] for s in seeds], axis=0)
            entry = {
                "condition": condition,
                "alpha": keys[0][1],
                "seeds": seeds,
                "accuracy": float(values.mean()),
                "ci95": bootstrap_mean_ci(values),
            }
            if condition != "bt":
                entry["delta_vs_bt"] = float(values.mean() - base.mean())
                entry["delta_ci95"] = paired_difference_ci(values, base)
            pooled.append(entry)
    levels = np.full(n, -1)
    for r in rows:
        levels[r["rows"]] = r["test_levels"]
    by_level: dict[str, list[float]] = {}
    for condition in NAMES:
        keys = [(condition, 0.0 if condition == "bt" else 1.0, s) for s in seeds]
        if all(k in complete for k in keys):
            values = np.mean([complete[k] for k in keys], axis=0)
            by_level[condition] = [float(values[levels == lv].mean()) for lv in range(int(levels.max()) + 1)]
    config = rows[0]["config"]
    print(
        f"recipe: {config['recipe']}\nhead: {config['head']}; k={config['k']} folds; "
        f"RewardEnsemble@{config['ensemble_k']}; {config['levels']} levels ({config['bins']})\n"
    )
    print("| condition | α | seed | accuracy | 95% CI | Δ vs BT | paired 95% CI | s (all folds) |")
    print("|---|---|---|---|---|---|---|---|")
    for e in table:
        delta = (
            f"{e['delta_vs_bt']:+.3f} | [{e['delta_ci95'][0]:+.3f}, {e['delta_ci95'][1]:+.3f}]"
            if "delta_vs_bt" in e
            else " | "
        )
        alpha_text = "–" if e["condition"] == "bt" else f"{e['alpha']:g}"
        print(
            f"| {NAMES[e['condition']]} | {alpha_text} | {e['seed']} | {e['accuracy']:.3f} | "
            f"[{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] | {delta} | {e['seconds']:.1f} |"
        )
    if pooled:
        print(f"\nmean over seeds {seeds} (α = 1):\n")
        print("| condition | accuracy | 95% CI | Δ vs BT | paired 95% CI |")
        print("|---|---|---|---|---|")
        for e in pooled:
            delta = (
                f"{e['delta_vs_bt']:+.3f} | [{e['delta_ci95'][0]:+.3f}, {e['delta_ci95'][1]:+.3f}]"
                if "delta_vs_bt" in e
                else " | "
            )
            low, high = e["ci95"]
            print(f"| {NAMES[e['condition']]} | {e['accuracy']:.3f} | [{low:.3f}, {high:.3f}] | {delta} |")
    counts = [int((levels == lv).sum()) for lv in range(int(levels.max()) + 1)]
    print(f"\naccuracy by the test pairs' Legend level (n = {' / '.join(map(str, counts))}), mean over seeds, α = 1:\n")
    for condition, shares in by_level.items():
        print(f"- {NAMES[condition]}: {' / '.join(f'{v:.3f}' for v in shares)}")
    if args.json:
        write_json(
            {"config": config, "runs": table, "mean_over_seeds": pooled, "by_level": by_level, "level_counts": counts},
            args.json,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("encode", "grid", "table"))
    parser.add_argument("--work", default=str(WORK), help="cache and results folder")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per text (train-rm's default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=64, help="pairs per cached chunk (resume unit)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="default", help="names the grid's results file")
    parser.add_argument("--direction", default=None, help="a saved direction artifact (else the XSTest recipe)")
    parser.add_argument("--recipe-layer", type=int, default=25)
    parser.add_argument("--recipe-pooling", default="mean", choices=("mean", "last"))
    parser.add_argument("--recipe-estimator", default="mean_difference")
    parser.add_argument("--k", type=int, default=5, help="cross-fitting folds")
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--ensemble-k", type=int, default=4, help="K of RewardEnsemble@K (inside the training folds)")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extra-alphas", type=float, nargs="*", default=[0.5, 2.0])
    parser.add_argument(
        "--conditions", nargs="+", default=["legend", "ensemble", "random"], choices=("legend", "ensemble", "random")
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--allow-partial", action="store_true", help="grid on the chunks encoded so far")
    parser.add_argument("--json", default=None, help="table stage: also write the table as JSON")
    args = parser.parse_args(argv)
    {"encode": stage_encode, "grid": stage_grid, "table": stage_table}[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
