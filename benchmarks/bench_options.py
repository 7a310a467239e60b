"""What the annotation options cost and what they change, on the same pairs (issue 19, part 4).

    python benchmarks/bench_options.py --artifacts runs/demo-artifacts --pairs 200 --json runs/options.json

Needs the two directions `legend demo` writes (`direction_legend/`, `direction_paper/` under
`--artifacts`). On `--pairs` evenly spaced rows of the bundled hh-rlhf sample it prints, from ONE run
(run it alone: the timings are wall clock on a shared CPU):

  1. cli (`--parts cli`): `legend annotate` with both directions as a user runs it, a fresh process
     per variant: the default; `LEGEND_MALLOC_TUNING=0` (glibc's default allocator settings instead of
     legend's, which keep freed memory for the next batch); `--keep-differences` (the pairs' embedding
     differences kept for the random floor). Wall seconds, minor page faults, and the kept differences'
     size on disk per 1,000 pairs (measured, and as 4 bytes x hidden size x directions for a 4096-d model).
     `--repeats` rounds in alternating order (the first process after a pause runs slower); medians.
  2. int8 (`--parts int8`): the same pairs through the library in float32 and with `--quantization
     int8` (dynamic int8 Linear layers, CPU): seconds, and how far int8's margins are from float32's
     for each direction: Spearman and sign agreement of the raw margins, and agreement with the hh labels
     (share of positive margins) with its 95% bootstrap CI under each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from legend.data import read_pairs
from legend.directions import Direction
from legend.margins import compute_margins_multi
from legend.metrics import bootstrap_mean_ci
from legend.models import load_model
from legend.resources import HH_RLHF_SAMPLE, sample_path


def spaced_rows(n: int, path: Path) -> int:
    """Write `n` evenly spaced rows of the bundled hh-rlhf sample to `path` (the same rows every run)."""
    import datasets

    table = datasets.load_dataset("json", data_files=str(sample_path(HH_RLHF_SAMPLE)), split="train")
    index = np.unique(np.linspace(0, len(table) - 1, num=min(n, len(table))).round().astype(int))
    table.select(index.tolist()).to_json(str(path))
    return len(index)


LEGEND = str(Path(sys.executable).with_name("legend"))  # the console script installed beside this Python


def run_cli(args: list[str], env: dict[str, str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([LEGEND, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"legend {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return {"seconds": seconds, "minor_faults": after.ru_minflt - before.ru_minflt}


def part_cli(data: Path, directions: list[Path], n_pairs: int, work: Path, repeats: int) -> dict:
    base = ["annotate", "--data", str(data), "-q"]
    for d in directions:
        base += ["--direction", str(d)]
    env = dict(os.environ)
    variants = {
        "default": ([], {}),
        "malloc_tuning_off": ([], {"LEGEND_MALLOC_TUNING": "0"}),
        "keep_differences": (["--keep-differences"], {}),
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(repeats):  # the order alternates, so warm-up and drift fall on every variant alike
        names = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in names:
            extra, extra_env = variants[name]
            out = work / f"{name}-{round_}" / "annotated.jsonl"
            measured = run_cli([*base, "--out", str(out), *extra], {**env, **extra_env})
            meta = out.parent / ".legend"
            kept = list(meta.rglob("*.safetensors")) if meta.exists() else []
            measured["differences_bytes"] = sum(p.stat().st_size for p in kept)
            runs[name].append(measured)
            print(
                f"  round {round_ + 1} {name:<20} {measured['seconds']:8.1f} s  "
                f"{measured['minor_faults']:>10,} minor faults",
                flush=True,
            )
    results: dict = {"runs": runs}
    for name, measured in runs.items():
        results[name] = {"median_seconds": statistics.median(m["seconds"] for m in measured)}
    for name in ("malloc_tuning_off", "keep_differences"):
        ratio = results[name]["median_seconds"] / results["default"]["median_seconds"]
        results[name]["vs_default"] = ratio
        print(f"  {name} / default: {ratio:.3f}x wall (medians of {repeats})")
    kept_bytes = runs["keep_differences"][0]["differences_bytes"]
    hidden = Direction.load(directions[0]).vector.numel()
    results["differences_per_1k_pairs_mb"] = kept_bytes / n_pairs * 1000 / 1e6
    results["differences_per_1k_pairs_4096d_mb"] = 4 * 4096 * len(directions) * 1000 / 1e6
    results["hidden_size"] = hidden
    print(
        f"  kept differences: {results['differences_per_1k_pairs_mb']:.2f} MB per 1,000 pairs "
        f"({len(directions)} directions, {hidden}-d); a 4096-d model: "
        f"{results['differences_per_1k_pairs_4096d_mb']:.1f} MB"
    )
    return results


def agreement(raw: np.ndarray) -> dict:
    positive = (raw > 0).astype(float)
    low, high = bootstrap_mean_ci(positive)
    return {"agreement": float(positive.mean()), "ci": [low, high]}


def part_int8(data: Path, directions: list[Path], model: str) -> dict:
    views = read_pairs(data).views
    loaded = [Direction.load(d) for d in directions]
    margins: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for quantization in (None, "int8"):
        name = quantization or "float32"
        lm = load_model(model, quantization=quantization)
        compute_margins_multi(lm, views[:2], loaded)  # warm-up: first forwards, allocator
        start = time.perf_counter()
        results = compute_margins_multi(lm, views, loaded)
        seconds[name] = time.perf_counter() - start
        margins[name] = [np.asarray(r.raw, dtype=np.float64) for r in results]
        print(f"  {name:<8} {seconds[name]:8.1f} s", flush=True)
        del lm
    report: dict = {"seconds": seconds, "speedup": seconds["float32"] / seconds["int8"], "directions": {}}
    for i, path in enumerate(directions):
        fp, q = margins["float32"][i], margins["int8"][i]
        row = {
            "spearman": float(spearmanr(fp, q).statistic),
            "sign_agreement": float(np.mean(np.sign(fp) == np.sign(q))),
            "float32": agreement(fp),
            "int8": agreement(q),
        }
        report["directions"][path.name] = row
        print(
            f"  {path.name:<18} Spearman {row['spearman']:.3f}, same sign {row['sign_agreement']:.3f}; agreement "
            f"fp32 {row['float32']['agreement']:.3f} [{row['float32']['ci'][0]:.3f}, {row['float32']['ci'][1]:.3f}]"
            f" int8 {row['int8']['agreement']:.3f} [{row['int8']['ci'][0]:.3f}, {row['int8']['ci'][1]:.3f}]"
        )
    print(f"  int8 speed-up: {report['speedup']:.2f}x")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("runs/demo-artifacts"), help="legend demo's artifacts")
    parser.add_argument("--pairs", type=int, default=200, help="evenly spaced hh pairs")
    parser.add_argument("--model", default="default", help="the directions' model (default: the embedded one)")
    parser.add_argument("--parts", default="cli,int8", help="comma-separated: cli, int8")
    parser.add_argument("--repeats", type=int, default=2, help="--parts cli: rounds, in alternating order")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    directions = [args.artifacts / "direction_legend", args.artifacts / "direction_paper"]
    for d in directions:
        if not (d / "direction.safetensors").is_file():
            raise SystemExit(f"{d}: no direction; run `legend demo` first or pass --artifacts")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    report: dict = {"pairs": args.pairs}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "pairs.jsonl"
        n_rows = spaced_rows(args.pairs, data)
        report["pairs"] = n_rows
        if "cli" in parts:
            print(f"cli: legend annotate on {n_rows} evenly spaced hh pairs, both directions, fresh processes")
            report["cli"] = part_cli(data, directions, n_rows, work, args.repeats)
        if "int8" in parts:
            print(f"int8: the same {n_rows} pairs through the library, float32 then int8")
            report["int8"] = part_int8(data, directions, args.model)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
