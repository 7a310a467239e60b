"""Issue 18: a layer choice that does not depend on which contrast pairs are brought, and its stability.

Stages:

  cache    encode every text set ONCE at every layer 0..L with both poolings (resumable chunk files,
           benchmarks/bench_selection.py's encoder): the sets of bench_selection (bundled XSTest pairs,
           induced AdvBench pairs with the paper's refusal and with the refusal bank, the PKU-SafeRLHF dev
           sample read from /work/shared only, the bundled hh-rlhf dev pairs) plus `xs48`, the 48-pair
           XSTest set of issue 18 (`xstest48_pairs`). Subsets and mixes index these cached rows.
  measure  offline: for every contrast set of issue 18 (`contrast_sets`) and every rule (`RULES`), the
           chosen layer (or band), its stability over bootstrap resamples of the contrast pairs, and hh
           share positive / length-balanced agreement, PKU Spearman(margin, severity gap) and PKU one-safe
           accuracy, each with a bootstrap 95% CI and a 200-direction random floor (bench_selection's
           evaluate_parts); plus a per-layer transfer profile (diagnostic only, never used to choose).

The rule (`legend.selection.stable.stable_band_choice`, pure functions over {(layer, pooling): tensor [n, hidden]}
of the harmless and harmful sides; docs/selection_stability.md; its checks on synthetic embeddings where the answer
is known are tests/test_selection_stable.py):

    nice -n 10 python benchmarks/bench_stability.py cache --cache runs/h18/cache --induced runs/h18/induced_pairs.jsonl
    python benchmarks/bench_stability.py measure --cache runs/h18/cache --out runs/h18/measure.json

Labels of hh and PKU are read by `measure` only to report the metrics; no rule sees them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_selection as bs

XSTEST = Path("/work/shared/data/xstest")
Embeddings = dict[tuple[int, str], torch.Tensor]

# ================================================================ the rule: legend.selection.stable (its one home)

from legend.selection.stable import (  # noqa: E402
    BAND_WIDTH,
    MIN_DEPTH,
    N_RESAMPLES,
    SEED,
    STABLE_SHARE,
    TOLERANCE_SE,
    eligible_centres,
    oob_effect_sizes,
    repeated_answers_warning,
    resample_indices,
    stability_figures,
    stable_band_choice,
)
from legend.selection.stable import resampled_band_scores as band_scores  # noqa: E402


def mean_difference(harmless: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
    """Unit mean(harmless - harmful), float64 (legend.directions.mean_difference)."""
    v = harmless.double().mean(0) - harmful.double().mean(0)
    return v / v.norm()


def band_direction(harmless: Embeddings, harmful: Embeddings, band: Sequence[int], pooling: str = "mean"):
    """The summed-band direction: [(layer, pooling, unit mean difference v_l, scale s_l)] for each layer of
    the band, s_l = |mean(harmless - harmful)| at that layer (the contrast pairs' mean projected gap).

    Its margin for a pair (chosen, rejected) is (1/|band|) * sum_l ((e_l(chosen) - e_l(rejected)) . v_l) / s_l:
    every layer's margin in units of its own contrast gap (1 = the average contrast pair), averaged.
    The scales come from the contrast pairs, so the margin is a fixed linear function of the pair, like a
    one-layer direction; a one-layer band reduces to today's margin divided by a constant.
    """
    parts = []
    for layer in band:
        a, b = harmless[(layer, pooling)], harmful[(layer, pooling)]
        gap = (a.double().mean(0) - b.double().mean(0)).norm()
        parts.append((layer, pooling, mean_difference(a, b), float(gap) * len(band)))
    return parts


# ================================================================ contrast sets


# The completion files' order on this machine's /work/shared as os.listdir gives it (ext4 hash order,
# not portable), written out: the other reading of issue 18's "file order" (set `xs48dir`).
DIRECTORY_ORDER = ("mistralinstruct", "llama2new", "llama2orig", "mistralguard", "gpt4")


def xstest48_pairs(limit: int = 48, root: Path = XSTEST, models: Sequence[str] | None = None) -> list[dict]:
    """Issue 18's 48-pair set, built from the XSTest files in /work/shared (never copied).

    File order, explicitly: the completion files `model_completions/xstest_v2_completions_<model>.csv`
    sorted by file name (gpt4, llama2new, llama2orig, mistralguard, mistralinstruct), or in the order of
    `models` when given; rows in their order in each file. For each prompt of `xstest_prompts.csv` in its
    row order with label `unsafe`, its completions are the rows whose id is `v2-<prompt id>`; harmful = the
    first with final_label `1_full_compliance`, harmless = the first with `2_full_refusal` (in that file
    order). Prompts lacking either are skipped; the first `limit` kept. The question is the prompt of
    xstest_prompts.csv (the completions' prompt is checked equal).

    Sorted by name, 44 of the 48 harmless answers are GPT-4's one sentence "Sorry, but I can't assist
    with that." (a near-template side, like the paper's one refusal); in DIRECTORY_ORDER they are
    Llama-2 (new) refusals, varied and long. The harmful answers are Mistral-Instruct's in both.
    """
    completions = root / "model_completions"
    if models is None:
        files = sorted(completions.glob("*.csv"))
    else:
        files = [completions / f"xstest_v2_completions_{m}.csv" for m in models]
    rows: dict[str, list[tuple[str, dict]]] = {}
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.setdefault(row["id"], []).append((path.stem.rsplit("_", 1)[-1], row))
    out = []
    with (root / "xstest_prompts.csv").open(newline="", encoding="utf-8") as handle:
        for prompt in csv.DictReader(handle):
            if prompt["label"] != "unsafe":
                continue
            found = rows.get(f"v2-{prompt['id']}", [])
            comply = [(m, r) for m, r in found if r["final_label"] == "1_full_compliance"]
            refuse = [(m, r) for m, r in found if r["final_label"] == "2_full_refusal"]
            if not comply or not refuse:
                continue
            for _, r in (comply[0], refuse[0]):
                if r["prompt"] != prompt["prompt"]:
                    raise SystemExit(f"xstest id {prompt['id']}: completion prompt differs from xstest_prompts.csv")
            out.append(
                {
                    "question": prompt["prompt"],
                    "harmful": comply[0][1]["completion"],
                    "harmless": refuse[0][1]["completion"],
                    "id": f"v2-{prompt['id']}",
                    "harmful_model": comply[0][0],
                    "harmless_model": refuse[0][0],
                }
            )
            if len(out) == limit:
                break
    return out


def set_specs(sizes: dict[str, int]) -> dict[str, tuple[list[tuple[str, np.ndarray]], str]]:
    """{name: ([(cached source, row indices)], how)} of every contrast set in issue 18's table.

    Halves of the bundled 131 pairs: `xs131_first` = rows 0..65 and `xs131_second` = rows 66..130 in file
    order (the file is sorted by XSTest type, so the halves differ in type: contrast_homonyms,
    contrast_figurative_language, contrast_safe_targets and part of contrast_safe_contexts vs the rest);
    `xs131_randA`/`xs131_randB` = the sorted first 66 / last 65 of numpy.random.default_rng(0).permutation(131).
    Mixes concatenate whole sources (the source is the group of each pair).
    """
    n = sizes["xstest"]
    half = (n + 1) // 2
    perm = np.random.default_rng(0).permutation(n)
    every = {name: np.arange(size) for name, size in sizes.items()}
    specs: dict = {
        "xs131": ([("xstest", every["xstest"])], f"bundled XSTest pairs ({n})"),
        "xs48": ([("xs48", every.get("xs48"))], "48 XSTest pairs, files sorted by name"),
        "xs48dir": ([("xs48dir", every.get("xs48dir"))], "48 XSTest pairs, DIRECTORY_ORDER"),
        "xs131_first": ([("xstest", np.arange(half))], f"bundled rows 0..{half - 1}"),
        "xs131_second": ([("xstest", np.arange(half, n))], f"bundled rows {half}..{n - 1}"),
        "xs131_randA": ([("xstest", np.sort(perm[:half]))], "bundled, random half A (seed 0)"),
        "xs131_randB": ([("xstest", np.sort(perm[half:]))], "bundled, random half B (seed 0)"),
        "bank": ([("bank", every.get("bank"))], "induced AdvBench pairs with the refusal bank"),
        "xs131+bank": ([("xstest", every["xstest"]), ("bank", every.get("bank"))], "bundled + bank"),
        "xs48+bank": ([("xs48", every.get("xs48")), ("bank", every.get("bank"))], "xs48 + bank"),
        "xs48dir+bank": ([("xs48dir", every.get("xs48dir")), ("bank", every.get("bank"))], "xs48dir + bank"),
        "paper": ([("paper", every.get("paper"))], "induced pairs, the paper's one refusal (reference)"),
    }
    return {name: spec for name, spec in specs.items() if all(src in sizes for src, _ in spec[0])}


def _gather(spec, sources: dict, pick, join):
    parts = [pick(sources[src], index) for src, index in spec]
    groups = None if len(spec) == 1 else [src for src, index in spec for _ in index]
    return join(parts), groups


def contrast_sets(cache: dict) -> dict[str, tuple[Embeddings, Embeddings, list | None, str]]:
    """{name: (harmless, harmful, groups or None, how)} of every contrast set (`set_specs`) from the cache."""
    sizes = {name: len(v[0][(1, "mean")]) for name, v in cache.items() if name not in ("hh", "pku")}
    out = {}
    for name, (spec, how) in set_specs(sizes).items():
        harmless, groups = _gather(spec, {k: v[0] for k, v in cache.items()}, _rows, lambda p: _cat(*p))
        harmful, _ = _gather(spec, {k: v[1] for k, v in cache.items()}, _rows, lambda p: _cat(*p))
        out[name] = (harmless, harmful, groups, how)
    return out


def contrast_texts(induced: Path | None) -> dict[str, tuple[list[str], list[str]]]:
    """{name: (harmless answers, harmful answers)} of every contrast set, in the cached rows' order."""
    from legend.data import read_contrast_pairs
    from legend.induce import assign_refusals, load_refusal_bank
    from legend.resources import XSTEST_PAIRS, sample_path

    xs = read_contrast_pairs(sample_path(XSTEST_PAIRS))
    base = {"xstest": ([p.harmless for p in xs], [p.harmful for p in xs])}
    for name, models in (("xs48", None), ("xs48dir", DIRECTORY_ORDER)):
        pairs = xstest48_pairs(models=models)
        base[name] = ([p["harmless"] for p in pairs], [p["harmful"] for p in pairs])
    if induced is not None:
        pairs = read_contrast_pairs(induced)
        harmful = [p.harmful for p in pairs]
        base["paper"] = ([p.harmless for p in pairs], harmful)
        base["bank"] = (assign_refusals([p.question for p in pairs], load_refusal_bank(), seed=0), harmful)
    out = {}
    for name, (spec, _) in set_specs({k: len(v[0]) for k, v in base.items()}).items():
        harmless, _ = _gather(spec, {k: v[0] for k, v in base.items()}, _pick, _flat)
        harmful, _ = _gather(spec, {k: v[1] for k, v in base.items()}, _pick, _flat)
        out[name] = (harmless, harmful)
    return out


def _pick(texts: list[str], index) -> list[str]:
    return [texts[j] for j in index]


def _flat(parts: list[list[str]]) -> list[str]:
    return [x for part in parts for x in part]


def _cat(*sides: Embeddings) -> Embeddings:
    return {k: torch.cat([s[k] for s in sides]) for k in sides[0]}


def _rows(side: Embeddings, index) -> Embeddings:
    index = torch.as_tensor(np.asarray(index))
    return {k: v[index] for k, v in side.items()}


# ================================================================ rules measured


def old_band_choice(harmless, harmful, num_layers, groups=None, seed=0) -> int:
    """Today's band rule with the legend recipe's settings (mean pooling, mean difference): one seeded
    80/20 split (cross-source validation when the pairs come from two sources), legend.selection.band_choice."""
    from legend.directions import ContrastEmbeddings
    from legend.selection import all_candidates, band_choice, sweep_embeddings

    emb = ContrastEmbeddings(harmless=harmless, harmful=harmful, n_truncated=0)
    result = sweep_embeddings(
        emb, all_candidates(range(1, num_layers + 1), ("mean",), ("mean_difference",)), seed=seed, groups=groups
    )
    return band_choice(result.rows, result.n_validation, num_layers=num_layers).layer


def old_auto_all_choice(harmless, harmful, num_layers, groups=None, seed=0) -> tuple[int, str, str]:
    """Today's `legend direction --select auto` (no --pooling/--estimator): the band rule over 30 layers x
    {last, mean} x {mean_difference, pca, logistic} (legend.selection.band_choice)."""
    from legend.directions import ContrastEmbeddings
    from legend.selection import all_candidates, band_choice, sweep_embeddings

    emb = ContrastEmbeddings(harmless=harmless, harmful=harmful, n_truncated=0)
    candidates = all_candidates(range(1, num_layers + 1), ("last", "mean"), ("mean_difference", "pca", "logistic"))
    result = sweep_embeddings(emb, candidates, seed=seed, groups=groups)
    row = band_choice(result.rows, result.n_validation, num_layers=num_layers)
    return row.layer, row.pooling, row.estimator


def _old_band_fast(diffs: dict[int, np.ndarray], num_layers: int, folds) -> int:
    """legend.selection.band_choice for one pooling and mean_difference only, in numpy: per layer the mean
    over folds of the validation effect size of the train mean difference; band mean over c-2..c+2; the
    highest band among eligible centres, ties by the layer's own effect size, then the deeper layer."""
    layers = list(range(1, num_layers + 1))
    es = {}
    for layer in layers:
        d = diffs[layer]
        values = []
        for train, validation in folds:
            v = d[train].mean(0)
            v = v / np.linalg.norm(v)
            proj = d[validation] @ v
            values.append(proj.mean() / proj.std(ddof=1) if len(proj) > 1 else np.nan)
        es[layer] = float(np.mean(values))
    band = {c: float(np.mean([es[x] for x in range(c - 2, c + 3) if x in es])) for c in layers}
    centres = eligible_centres(layers, num_layers)
    return max(centres, key=lambda c: (band[c], es[c], c))


def _folds(n: int, seed: int, groups=None):
    from legend.directions import split_indices

    if groups is not None and len(set(groups)) >= 2:
        labels = np.asarray(groups)
        return [(np.flatnonzero(labels != g), np.flatnonzero(labels == g)) for g in dict.fromkeys(labels.tolist())]
    return [split_indices(n, 0.2, seed)]


def old_band_stability(harmless, harmful, num_layers, chosen, groups=None, n_seeds=100) -> dict:
    """The old rule's stability: its choice under `n_seeds` other split seeds 1..n_seeds (cross-source
    validation is deterministic, so for mixes over `n_seeds` stratified bootstrap resamples of the pairs).
    Computed by `_old_band_fast`, checked equal to legend.selection's choice on the unchanged pairs."""
    n = len(next(iter(harmless.values())))
    diffs = {
        layer: (harmless[(layer, "mean")].double() - harmful[(layer, "mean")].double()).numpy()
        for layer in range(1, num_layers + 1)
    }
    if _old_band_fast(diffs, num_layers, _folds(n, 0, groups)) != chosen:
        raise SystemExit("the fast old band rule disagrees with legend.selection.band_choice")
    choices = []
    if groups is None:
        for seed in range(1, n_seeds + 1):
            choices.append(_old_band_fast(diffs, num_layers, _folds(n, seed)))
    else:
        for draw in resample_indices(n, n_seeds, 1, groups):
            resampled = {layer: d[draw] for layer, d in diffs.items()}
            choices.append(_old_band_fast(resampled, num_layers, _folds(n, 0, list(np.asarray(groups)[draw]))))
    centres = eligible_centres(range(1, num_layers + 1), num_layers)
    return stability_figures(choices, chosen, centres)


RULES = (
    "old_band",
    "old_auto_all",
    "prior",
    "boot_mean",
    "boot_mode",
    "stable_paired",
    "stable",
    "stable_bandsum",
    "old_bandsum",
)
RULE_TEXT = {
    "old_band": "before: today's band rule (one 80/20 split), one layer",
    "old_auto_all": "before, CLI: today's --select auto over both poolings and 3 estimators (band rule)",
    "stable_paired": "one-SE rule with paired SDs + prior, one layer",
    "prior": "no evidence: the prior centre (middle of the allowed range), one layer",
    "boot_mean": "highest mean bootstrap band score, one layer",
    "boot_mode": "the band that wins most often over resamples, one layer",
    "stable": "after: one-SE rule + prior over bootstrap band scores, one layer",
    "stable_bandsum": "after, band: the stable centre, margins averaged over its 5 layers",
    "old_bandsum": "the old centre, margins averaged over its 5 layers",
}


def _single(harmless, harmful, layer, pooling="mean"):
    return [(layer, pooling, mean_difference(harmless[(layer, pooling)], harmful[(layer, pooling)]))]


def apply_rules(name, harmless, harmful, groups, num_layers, rules) -> dict[str, tuple[str, list, dict]]:
    """{rule: (how, parts, selection record)} for one contrast set."""
    out = {}
    stable = stable_band_choice(harmless, harmful, num_layers=num_layers, groups=groups)
    centres = stable.centres
    record = stable.to_dict()
    old = old_band_choice(harmless, harmful, num_layers, groups)
    per_resample_best = [
        centres[int(np.nanargmax(row))]
        for row in band_scores(
            oob_effect_sizes(
                harmless, harmful, range(1, num_layers + 1), "mean", resample_indices(stable.n_pairs, groups=groups)
            ),
            list(range(1, num_layers + 1)),
            centres,
        )
    ]
    mode = Counter(per_resample_best).most_common(1)[0][0]
    prior = math.ceil(stable.prior) if stable.prior != int(stable.prior) else int(stable.prior)  # ties: deeper
    for rule in rules:
        if rule == "old_band":
            sel = {"centre": old, "stability": old_band_stability(harmless, harmful, num_layers, old, groups)}
            out[rule] = (f"layer {old}", _single(harmless, harmful, old), sel)
        elif rule == "old_bandsum":
            band = range(old - BAND_WIDTH, old + BAND_WIDTH + 1)
            out[rule] = (f"band {old}±2", band_direction(harmless, harmful, band), {"centre": old})
        elif rule == "prior":
            out[rule] = (f"layer {prior}", _single(harmless, harmful, prior), {"centre": prior})
        elif rule == "boot_mean":
            c = stable.best_centre
            sel = {"centre": c, "stability": stability_figures(per_resample_best, c, centres)}
            out[rule] = (f"layer {c}", _single(harmless, harmful, c), sel)
        elif rule == "boot_mode":
            sel = {"centre": mode, "stability": stability_figures(per_resample_best, mode, centres)}
            out[rule] = (f"layer {mode}", _single(harmless, harmful, mode), sel)
        elif rule == "stable_paired":
            paired = stable_band_choice(harmless, harmful, num_layers=num_layers, groups=groups, paired=True)
            out[rule] = (f"layer {paired.centre}", _single(harmless, harmful, paired.centre), paired.to_dict())
        elif rule == "old_auto_all":
            layer, pooling, estimator = old_auto_all_choice(harmless, harmful, num_layers, groups)
            from legend.directions import ESTIMATORS

            v = ESTIMATORS[estimator](harmless[(layer, pooling)], harmful[(layer, pooling)])
            out[rule] = (f"{layer} {pooling} {estimator}", [(layer, pooling, v)], {"centre": layer})
        elif rule == "stable":
            out[rule] = (f"layer {stable.centre}", _single(harmless, harmful, stable.centre), record)
        elif rule == "stable_bandsum":
            out[rule] = (f"band {stable.centre}±2", band_direction(harmless, harmful, stable.band), record)
        else:
            raise SystemExit(f"unknown rule {rule}")
    return out


def layer_profile(harmless, harmful, cache, layers) -> dict[int, dict[str, float]]:
    """Diagnostic only (never used to choose): point values of the four metrics for every single layer."""
    from scipy import stats

    hc, hr, hx = cache["hh"]
    pc, pr, px = cache["pku"]
    ld = hx["chosen_chars"].astype(float) - hx["rejected_chars"].astype(float)
    sev = px["rejected_severity"].astype(float) - px["chosen_severity"].astype(float)
    one = px["chosen_safe"] != px["rejected_safe"]
    out = {}
    for layer in layers:
        v = mean_difference(harmless[(layer, "mean")], harmful[(layer, "mean")])
        m = ((hc[(layer, "mean")].double() - hr[(layer, "mean")].double()) @ v).numpy()
        m[hx["identical"].astype(bool)] = 0.0
        p = ((pc[(layer, "mean")].double() - pr[(layer, "mean")].double()) @ v).numpy()
        out[layer] = {
            "hh_share": float((m > 0).mean()),
            "hh_balanced": float(0.5 * ((m[ld < 0] > 0).mean() + (m[ld > 0] > 0).mean())),
            "pku_rho": float(stats.spearmanr(p, sev).statistic),
            "pku_one_safe": float(((p[one] > 0) == px["chosen_safe"][one]).mean()),
        }
    return out


# ================================================================ stages


def stage_cache(args: argparse.Namespace) -> None:
    from legend.encoding import question_items

    sets = bs._pair_sets(args)  # xstest, paper, bank (with --induced), pku, hh: read and checked first
    for name, models in (("xs48", None), ("xs48dir", DIRECTORY_ORDER)):
        pairs = xstest48_pairs(models=models)
        q = [p["question"] for p in pairs]
        harmless, harmful = [p["harmless"] for p in pairs], [p["harmful"] for p in pairs]
        sets.append((name, question_items(q, harmless), question_items(q, harmful), {}))
        print(f"{len(pairs)} {name} pairs; models {Counter((p['harmful_model'], p['harmless_model']) for p in pairs)}")
    bs.encode_sets(args, sets)


def stage_measure(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    cache = {}
    for name in ("xstest", "xs48", "xs48dir", "paper", "bank", "pku", "hh"):
        try:
            cache[name] = bs.load_set(args.cache, name)
        except SystemExit as err:
            print(f"skip {name}: {err}")
    _check_complete(cache)
    num_layers = max(k[0] for k in cache["xstest"][0])
    sets = contrast_sets(cache)
    texts = contrast_texts(args.induced if args.induced and args.induced.is_file() else None)
    wanted = args.sets.split(",") if args.sets else list(sets)
    rules = args.rules.split(",")
    out: dict = {"num_layers": num_layers, "sets": {}, "constants": _constants()}
    evaluated: dict = {}
    for name in wanted:
        harmless, harmful, groups, how = sets[name]
        n = len(harmless[(1, "mean")])
        print(f"== {name}: {how}, {n} pairs", flush=True)
        entry: dict = {"how": how, "n": n, "rules": {}}
        if name in texts:
            entry["repeated_answers_warning"] = repeated_answers_warning(*texts[name])
            if entry["repeated_answers_warning"]:
                print(f"warning: {entry['repeated_answers_warning']}")
        for rule, (desc, parts, sel) in apply_rules(name, harmless, harmful, groups, num_layers, rules).items():
            cache_key = (name, desc)  # the same direction chosen by two rules is evaluated once
            if cache_key not in evaluated and ("hh" in cache or "pku" in cache):
                evaluated[cache_key] = bs.evaluate_parts(parts, cache, args.boot, args.random, args.seed)
            record = {"chosen": desc, "selection": sel, **evaluated.get(cache_key, {})}
            entry["rules"][rule] = record
            stab = sel.get("stability", {})
            extra = (
                f" | in band {stab['share_in_band']:.2f}, exact {stab['share_exact']:.2f}, range {stab['range']}"
                + (" WARN" if stab["warnings"] else "")
                if stab
                else ""
            )
            bs.print_record(f"{rule:15s} {desc:12s}{extra}", record)
        if args.profile and "hh" in cache and "pku" in cache:
            entry["profile"] = layer_profile(harmless, harmful, cache, range(1, num_layers + 1))
        out["sets"][name] = entry
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(f"measure: {out['seconds']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


TARGETS = {
    "hh_share_positive": 0.62,
    "hh_agreement_length_balanced": 0.60,
    "pku_severity_spearman": 0.30,
    "pku_one_safe_accuracy": 0.80,
}


def _cell(m: dict | None, target: float) -> str:
    if not m:
        return "n/a"
    ok = m["value"] >= target and m["value"] > m["floor_p95"]
    mark = "" if ok else " ✗"
    return f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] fl {m['floor_p95']:.3f}{mark}"


def _stab(sel: dict) -> str:
    st = sel.get("stability")
    if not st:
        return ""
    warn = " ⚠" + "; ".join("edge" if "allowed" in w else "unstable" for w in st["warnings"]) if st["warnings"] else ""
    return f"{st['share_in_band']:.2f} / {st['share_exact']:.2f}, {st['range'][0]}–{st['range'][1]}{warn}"


def stage_table(args: argparse.Namespace) -> None:
    """Markdown tables (every set x rule) from a measure JSON: value [95% CI] and floor (95th pct of 200
    random directions); ✗ marks a value under its target or not above its floor."""
    data = json.loads(args.json.read_text())
    rules = args.rules.split(",") if args.rules else None
    if args.compact:
        text = _compact(data, rules)
        print(text)
        if args.out:
            args.out.write_text(text)
        return
    head = (
        "| set (pairs) | rule | chosen | hh share positive | hh length-balanced | PKU Spearman | PKU one-safe |"
        " stability: in band / exact, range |"
    )
    lines = [head, "|" + " --- |" * 8]
    for name, entry in data["sets"].items():
        for rule, rec in entry["rules"].items():
            if rules and rule not in rules:
                continue
            cells = [_cell(rec.get(k), t) for k, t in TARGETS.items()]
            row = [f"{name} ({entry['n']})", rule, rec["chosen"], *cells, _stab(rec["selection"])]
            lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    if "profile" in next(iter(data["sets"].values())):
        text += "\n| set | " + " | ".join(str(x) for x in range(15, 29)) + " |\n|" + " --- |" * 15 + "\n"
        for key in ("hh_share", "hh_balanced", "pku_rho", "pku_one_safe"):
            for name, entry in data["sets"].items():
                prof = entry.get("profile", {})
                vals = [prof.get(str(x), {}).get(key) for x in range(15, 29)]
                text += f"| {name} {key} | " + " | ".join("" if v is None else f"{v:.3f}" for v in vals) + " |\n"
    print(text)
    if args.out:
        args.out.write_text(text)


def _compact(data: dict, rules: list[str] | None) -> str:
    """One row per set, one column per rule: chosen layer and the four values (hh share / balanced /
    PKU Spearman / one-safe), * where all four meet their targets above the floor."""
    names = rules or list(next(iter(data["sets"].values()))["rules"])
    lines = ["| set | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for name, entry in data["sets"].items():
        cells = []
        for rule in names:
            rec = entry["rules"][rule]
            values = [rec[k]["value"] for k in TARGETS]
            ok = all(rec[k]["value"] >= t and rec[k]["value"] > rec[k]["floor_p95"] for k, t in TARGETS.items())
            chosen = rec["chosen"].replace("layer ", "").replace("mean_difference", "md")
            cells.append(f"{chosen}: " + " / ".join(f"{v:.3f}" for v in values) + (" *" if ok else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _check_complete(cache: dict) -> None:
    """Refuse to measure on a partly cached hh or PKU set (the cache stage may still be running)."""
    import gzip

    from legend.resources import HH_RLHF_SAMPLE, sample_path

    with gzip.open(sample_path(HH_RLHF_SAMPLE), "rt", encoding="utf-8") as handle:
        expected = {"hh": sum(1 for line in handle if line.strip())}
    with bs.PKU.open(encoding="utf-8") as handle:
        expected["pku"] = sum(1 for line in handle if line.strip())
    for name, n in expected.items():
        if name in cache and len(cache[name][2]["identical"]) != n:
            raise SystemExit(f"{name}: {len(cache[name][2]['identical'])} of {n} rows cached; finish the cache stage")


def _constants() -> dict:
    return {
        "BAND_WIDTH": BAND_WIDTH,
        "MIN_DEPTH": MIN_DEPTH,
        "N_RESAMPLES": N_RESAMPLES,
        "TOLERANCE_SE": TOLERANCE_SE,
        "STABLE_SHARE": STABLE_SHARE,
        "SEED": SEED,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    cache = sub.add_parser("cache")
    cache.add_argument("--cache", type=Path, default=Path("runs/h18/cache"))
    cache.add_argument("--induced", type=Path, default=None, help="induced AdvBench pairs (question/harmful/harmless)")
    cache.add_argument("--dtype", default="float32")
    cache.add_argument("--hh-limit", type=int, default=None)
    cache.add_argument("--pku-limit", type=int, default=None)
    cache.add_argument("--model", default="default")
    cache.add_argument("--order", default="xstest,xs48,bank,paper,pku,hh,xs48dir", help="encoding order of the sets")
    cache.add_argument("--max-length", type=int, default=2048)
    cache.add_argument("--batch-size", type=int, default=16)
    cache.add_argument("--threads", type=int, default=2)
    cache.add_argument("--chunk", type=int, default=50)
    measure = sub.add_parser("measure")
    measure.add_argument("--cache", type=Path, default=Path("runs/h18/cache"))
    measure.add_argument("--out", type=Path, default=None)
    measure.add_argument("--induced", type=Path, default=Path("runs/h18/induced_pairs.jsonl"))
    measure.add_argument("--sets", default=None, help="comma-separated contrast sets (default: all)")
    measure.add_argument("--rules", default=",".join(RULES))
    measure.add_argument("--boot", type=int, default=1000)
    measure.add_argument("--random", type=int, default=200)
    measure.add_argument("--seed", type=int, default=0)
    measure.add_argument("--profile", action="store_true", help="also the per-layer transfer profile (diagnostic)")
    table = sub.add_parser("table")
    table.add_argument("json", type=Path)
    table.add_argument("--rules", default=None)
    table.add_argument("--out", type=Path, default=None)
    table.add_argument("--compact", action="store_true", help="one row per set, one column per rule")
    args = parser.parse_args(argv)
    stages = {"cache": stage_cache, "measure": stage_measure, "table": stage_table}
    stages[args.stage](args)


if __name__ == "__main__":
    main(sys.argv[1:])
