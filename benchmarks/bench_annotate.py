"""Benchmark `legend annotate` against the paper's reference approach and the bare-forward limit.

    python benchmarks/bench_annotate.py                      # defaults: 64 pairs, fp32, last layer
    python benchmarks/bench_annotate.py --pairs 200 --sizes 50,100,200,400 --json runs/bench.json
    python benchmarks/bench_annotate.py --device cuda --pairs 512 --batch-size 64 --sizes 128,256,512,1024  # GPU
    python benchmarks/bench_annotate.py --parts cli --cli-sizes 8,160,1101 --json runs/bench_cli.json  # CLI end to end

On the embedded model (SmolLM2-135M-Instruct) and the bundled hh-rlhf sample it prints, from ONE run:
  1. ours: `legend annotate`'s library path (`pipeline.annotate_file`: read, margins, binning, write)
     throughput (pairs/s, tokens/s) and peak resident memory above the start;
  2. reference: batch size 1, full model with output_hidden_states, each pair's two texts encoded
     separately (how the paper's released code works); ratio ours / reference;
  3. limit: a plain batched forward of the base model (all layers, no hooks) over exactly the
     tokens of both full texts of every pair, batched as ours; ratio ours / limit, and what prefix
     sharing and early exit contribute (each switched off in turn), and prefix sharing through the
     KV cache instead of packed rows;
  4. bf16 + a middle-layer direction, compared with the same fp32 reference and limit;
  5. scaling: time for growing numbers of pairs (should be linear: s/pair about constant);
  6. cli (`--parts cli`, run alone): `legend annotate` as a user runs it, a fresh process per size
     (start-up, model load, reading, writing included), on the first N bundled pairs for each of
     `--cli-sizes`: ms per token of the full texts, total and marginal over the smallest size (which
     removes the fixed start-up cost), against the paper's batch-1 approach and a bare batched
     forward measured in this process on the same pairs (evenly spaced subsets of at most
     `--cli-sample` pairs for the larger sizes, whose per-token rates stand for the whole).
Timings on a shared CPU are noisy: `--repeats` runs the main comparison several times and reports
medians. The direction is a random unit vector: speed does not depend on its values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from legend.data import detect_layout, load_table, pair_views
from legend.directions import Direction
from legend.encoding import EncodeConfig, encode, plan_batches, render, template_kind, tokenize_items
from legend.io import write_table
from legend.models import load_model
from legend.pipeline import AnnotateSettings, annotate_file
from legend.resources import HH_RLHF_SAMPLE, sample_path


class PeakRSS:
    """Samples this process's resident memory in a thread; `.peak_mb` is the peak above the start."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.peak_mb = (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def random_direction(lm, layer: int, pooling: str) -> Direction:
    vector = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return Direction(
        vector=vector / vector.norm(),
        layer=layer,
        pooling=pooling,
        model_id=lm.model_id,
        fingerprint=lm.fingerprint,
        hidden_size=lm.hidden_size,
        num_layers=lm.num_layers,
        template=template_kind(lm.tokenizer),
        name="bench",
    )


def timed(fn):
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # GPU kernels run asynchronously: count them in the time
    return time.perf_counter() - start, value


def run_ours(lm, direction, data_path, n, settings):
    """The library path behind `legend annotate` (model already loaded), writing a JSONL file."""
    with tempfile.TemporaryDirectory() as folder, PeakRSS() as memory:
        seconds, result = timed(
            lambda: annotate_file(data_path, direction, Path(folder) / "out.jsonl", lm, settings, limit=n)
        )
    return seconds, result, memory.peak_mb


def run_encode(lm, items, config):
    """The engine alone (for switching prefix sharing / early exit off)."""
    return timed(lambda: encode(lm, items, config))


def run_reference(lm, views, layer):
    """The paper's way: each text alone, batch 1, full model with every hidden state, last token."""
    kind = template_kind(lm.tokenizer)
    margins = []

    def one(prompt, response):
        prefix, answer = render(lm.tokenizer, prompt, response, kind)
        ids = lm.tokenizer(prefix + answer, return_tensors="pt", add_special_tokens=kind == "plain")["input_ids"]
        with torch.no_grad():
            return lm.model(input_ids=ids.to(lm.device), output_hidden_states=True).hidden_states[layer][0, -1]

    def run():
        for view in views:
            margins.append(one(view.prompt, view.chosen) - one(view.prompt, view.rejected))

    return timed(run)[0]


def run_limit(lm, items, config):
    """A bare batched forward of the base model over the same tokens (both full texts), all layers."""
    texts = tokenize_items(lm.tokenizer, items, config)
    lengths = [len(t.ids) for t in texts]
    batches = plan_batches(lengths, config.batch_size, config.max_batch_tokens, config.max_padding)
    pad = lm.tokenizer.pad_token_id

    def run():
        with torch.inference_mode():
            for batch in batches:
                width = max(lengths[i] for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, index in enumerate(batch):
                    ids[row, : lengths[index]] = torch.tensor(texts[index].ids)
                    mask[row, : lengths[index]] = 1
                lm.model.base_model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)

    return timed(run)[0], sum(lengths)


def pair_items(views):
    return [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views if v.chosen != v.rejected]


def compare(lm, data_path, views, layer, settings, reference_s=None, limit_s=None, with_reference=True):
    """One round: ours, ours without sharing, ours without early exit, (reference), limit."""
    n = len(views)
    direction = random_direction(lm, layer, "last")
    items = pair_items(views)
    config = direction.encode_config(settings.encoding)
    row = {}
    row["ours_s"], result, row["peak_mb"] = run_ours(lm, direction, data_path, n, settings)
    row["tokens"], row["forward_tokens"] = result.margins.n_tokens, result.margins.extra.get("forward_tokens")
    row["sharing_on_s"], _ = run_encode(lm, items, config)
    row["sharing_off_s"], _ = run_encode(lm, items, EncodeConfig(**{**config.__dict__, "prefix_sharing": False}))
    row["sharing_cache_s"], _ = run_encode(lm, items, EncodeConfig(**{**config.__dict__, "sharing_method": "cache"}))
    row["early_exit_off_s"], _ = run_encode(lm, items, EncodeConfig(**{**config.__dict__, "layers": (layer, -1)}))
    row["padding_limit_off_s"], _ = run_encode(lm, items, EncodeConfig(**{**config.__dict__, "max_padding": 1.0}))
    row["limit_s"], row["limit_tokens"] = run_limit(lm, items, config) if limit_s is None else (limit_s, None)
    if with_reference:
        row["reference_s"] = run_reference(lm, views, layer) if reference_s is None else reference_s
    print(
        "  measured: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.endswith("_s")),
        file=sys.stderr,
        flush=True,
    )
    return row


def warm_up(lm, views):
    """One small forward first, so kernel set-up and caches are not timed."""
    encode(lm, pair_items(views[:2]), EncodeConfig(max_length=256))


def median_rows(rows):
    return {
        k: statistics.median(r[k] for r in rows) if isinstance(rows[0][k], (int, float)) else rows[0][k]
        for k in rows[0]
        if all(r.get(k) is not None for r in rows)
    }


def report_line(name, seconds, n, tokens, reference, limit):
    ratios = []
    if reference:
        ratios.append(f"{reference / seconds:5.2f}x reference")
    if limit:
        ratios.append(f"{limit / seconds:5.2f}x limit")
    return (
        f"  {name:<38} {seconds:8.1f} s  {n / seconds:7.3f} pairs/s  {tokens / seconds:8.0f} tokens/s   "
        + ", ".join(ratios)
    )


def cli_annotate(direction_path: Path, data_path: Path, out: Path, args) -> float:
    """Wall time of `legend annotate` in a fresh process (what a user waits for), resume off."""
    import subprocess

    command = [sys.executable, "-c", "from legend.cli import main; main()", "annotate"]
    command += ["--direction", str(direction_path), "--data", str(data_path), "--out", str(out), "-q", "--no-resume"]
    command += ["--batch-size", str(args.batch_size), "--max-batch-tokens", str(args.max_batch_tokens)]
    if args.device:
        command += ["--device", args.device]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def plan_counts(lm, items, config) -> dict:
    """How ours batches `items` (packed rows, one forward per batch): forwards, rows and tokens per forward, padding."""
    from legend.encoding import pack_by_prefix, row_length, sharing_routes

    texts = tokenize_items(lm.tokenizer, items, config)
    _, packed, cached = sharing_routes(lm, texts, config, lm.num_layers)
    subset = [texts[i] for i in packed]
    lengths = [row_length(row, subset, True) for row in pack_by_prefix(subset, 2 * config.length_limit)]
    batches = plan_batches(lengths, config.batch_size, config.max_batch_tokens, config.max_padding)
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return {
        "forwards": len(batches),
        "rows_per_forward": len(lengths) / max(len(batches), 1),
        "tokens_per_forward": sum(lengths) / max(len(batches), 1),
        "padding_share": 1 - sum(lengths) / max(padded, 1),
        "cached_prompts": len(cached),
    }


def evenly_spaced(views, count: int):
    if len(views) <= count:
        return list(views)
    step = len(views) / count
    return [views[int(i * step)] for i in range(count)]


def run_cli(args, table, layout, results: dict) -> None:
    """Part 6: the CLI end to end at several sizes, per token, against the reference and the bare forward."""
    sizes = sorted(int(s) for s in args.cli_sizes.split(",") if s)
    if sizes[-1] > len(table):
        sys.exit(f"the bundled sample has {len(table)} pairs; asked for {sizes[-1]}")
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    direction = random_direction(lm, args.layer, "last")
    config = direction.encode_config(EncodeConfig(batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens))
    all_views = pair_views(table.select(range(sizes[-1])), layout)
    warm_up(lm, all_views)
    print(
        f"\n== CLI end to end ({lm.model_id}, {args.dtype}, layer {args.layer}; a fresh `legend annotate` process "
        f"per size; load average {os.getloadavg()[0]:.1f})"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        direction_path = direction.save(Path(folder) / "direction")
        for size in sizes:
            data_path = Path(folder) / f"hh{size}.jsonl"
            write_table(table.select(range(size)), data_path)
            views = all_views[:size]
            tokens = sum(len(t.ids) for t in tokenize_items(lm.tokenizer, pair_items(views), config))
            cli_s = cli_annotate(direction_path, data_path, Path(folder) / f"out{size}.jsonl", args)
            sample = evenly_spaced(views, args.cli_sample)
            sample_tokens = sum(len(t.ids) for t in tokenize_items(lm.tokenizer, pair_items(sample), config))
            reference_s = run_reference(lm, sample, args.layer)
            limit_s, _ = run_limit(lm, pair_items(sample), config)
            engine_s = run_encode(lm, pair_items(sample), config)[0]  # the engine alone, model loaded and warm
            row = {
                "pairs": size,
                "tokens": tokens,
                "cli_s": cli_s,
                "sample_pairs": len(sample),
                "sample_tokens": sample_tokens,
                "reference_ms_per_token": 1e3 * reference_s / sample_tokens,
                "limit_ms_per_token": 1e3 * limit_s / sample_tokens,
                "engine_ms_per_token": 1e3 * engine_s / sample_tokens,
                "cli_ms_per_token": 1e3 * cli_s / tokens,
                "plan": plan_counts(lm, pair_items(views), config),
            }
            if rows:
                first = rows[0]
                row["cli_marginal_ms_per_token"] = 1e3 * (cli_s - first["cli_s"]) / (tokens - first["tokens"])
            rows.append(row)
            print(f"  measured: {row}", file=sys.stderr, flush=True)
    print(
        f"  {'pairs':>6} {'tokens':>8} {'CLI s':>8} {'CLI ms/tok':>11} {'marginal':>9} {'paper ms/tok':>13} "
        f"{'bare ms/tok':>12} {'engine ms/tok':>14} {'vs paper':>9} {'vs bare':>8} "
        f"{'fwds':>5} {'rows/fwd':>8} {'pad':>5}"
    )
    for row in rows:
        per_token = row.get("cli_marginal_ms_per_token", row["cli_ms_per_token"])
        print(
            f"  {row['pairs']:6d} {row['tokens']:8d} {row['cli_s']:8.1f} {row['cli_ms_per_token']:11.3f} "
            f"{row.get('cli_marginal_ms_per_token', float('nan')):9.3f} {row['reference_ms_per_token']:13.3f} "
            f"{row['limit_ms_per_token']:12.3f} {row['engine_ms_per_token']:14.3f} "
            f"{row['reference_ms_per_token'] / per_token:8.2f}x {row['limit_ms_per_token'] / per_token:7.2f}x "
            f"{row['plan']['forwards']:5d} {row['plan']['rows_per_forward']:8.1f} {row['plan']['padding_share']:5.3f}"
        )
    print(
        f"  ratios use the marginal ms/token over the {sizes[0]}-pair run (start-up and model load removed) where "
        "there is one; the paper, bare and engine (legend's encode, model loaded and warm) rates are measured in "
        "this process on the same pairs (at most --cli-sample of them, evenly spaced)"
    )
    results["cli"] = rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=64, help="pairs for the main comparison")
    parser.add_argument("--dtype", default="float32", help="dtype of the main comparison")
    parser.add_argument("--layer", type=int, default=-1, help="direction layer of the main comparison")
    parser.add_argument("--mid-layer", type=int, default=None, help="layer of the bf16 run (default: L/2)")
    parser.add_argument("--sizes", default="32,64,128,256", help="pair counts for the scaling run ('' to skip)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the main comparison (medians reported)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument(
        "--parts",
        default="main,bf16,scaling",
        help="which parts to run (comma-separated); bf16 ratios need main in the same run",
    )
    parser.add_argument("--model", default="default", help="annotator model (default: the embedded SmolLM2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--cli-sizes", default="8,160,1101", help="--parts cli: pair counts, the smallest as baseline")
    parser.add_argument(
        "--cli-sample", type=int, default=300, help="--parts cli: most pairs for the reference and bare rates"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    table = load_table(sample_path(HH_RLHF_SAMPLE))
    n_max = max([args.pairs] + [int(s) for s in args.sizes.split(",") if s])
    if n_max > len(table):
        sys.exit(f"the bundled sample has {len(table)} pairs; asked for {n_max}")
    layout = detect_layout(table)
    if args.parts == "cli":
        results_cli: dict = {"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()}}
        run_cli(args, table, layout, results_cli)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results_cli, indent=2, default=str))
        return results_cli
    settings = AnnotateSettings(
        encoding=EncodeConfig(batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens)
    )
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
        },
        "pairs": args.pairs,
    }
    with tempfile.TemporaryDirectory() as folder:
        data_path = Path(folder) / "hh.jsonl"
        write_table(table.select(range(n_max)), data_path)
        views = pair_views(table.select(range(args.pairs)), layout)
        lm = load_model(args.model, dtype=args.dtype, device=args.device)
        print(
            f"legend annotate benchmark: {lm.model_id} ({args.dtype}), {args.pairs} hh-rlhf pairs, layer "
            f"{args.layer}, {torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}"
        )
        parts = set(args.parts.split(","))
        warm_up(lm, views)
        if "main" in parts:
            rounds = [compare(lm, data_path, views, args.layer, settings) for _ in range(args.repeats)]
            main_row = median_rows(rounds)
        else:
            rounds, main_row = (
                [],
                {
                    "tokens": sum(
                        len(t.ids)
                        for t in tokenize_items(
                            lm.tokenizer, pair_items(views), random_direction(lm, args.layer, "last").encode_config()
                        )
                    ),
                    "reference_s": None,
                    "limit_s": None,
                },
            )
        n, tokens = args.pairs, main_row["tokens"]
        ref, lim = main_row["reference_s"], main_row["limit_s"]
        if "main" in parts:
            results["main"] = {"dtype": args.dtype, "layer": args.layer, "rounds": rounds, "median": main_row}
            print(
                f"\n== {args.dtype}, direction at layer {args.layer} ({n} pairs, {tokens:.0f} tokens in both "
                f"full texts, "
                f"{main_row['forward_tokens']:.0f} run with prefix sharing)"
            )
            print(report_line("ours (legend annotate, file to file)", main_row["ours_s"], n, tokens, ref, lim))
            print(f"  {'':<38} peak memory +{main_row['peak_mb']:.0f} MB")
            print(report_line("engine: prefix sharing + early exit", main_row["sharing_on_s"], n, tokens, ref, lim))
            print(report_line("engine: prefix sharing off", main_row["sharing_off_s"], n, tokens, ref, lim))
            print(report_line("engine: prefix sharing via KV cache", main_row["sharing_cache_s"], n, tokens, ref, lim))
            print(report_line("engine: early exit off (all layers)", main_row["early_exit_off_s"], n, tokens, ref, lim))
            print(report_line("engine: padding limit off", main_row["padding_limit_off_s"], n, tokens, ref, lim))
            print(report_line("reference (batch 1, all hidden states)", ref, n, tokens, None, lim))
            print(report_line("limit (bare batched forward)", lim, n, tokens, ref, None))
            print(
                f"  prefix sharing contributes {main_row['sharing_off_s'] / main_row['sharing_on_s']:.2f}x, "
                f"early exit {main_row['early_exit_off_s'] / main_row['sharing_on_s']:.2f}x, "
                f"padding limit {main_row['padding_limit_off_s'] / main_row['sharing_on_s']:.2f}x"
            )

        if not args.skip_bf16 and "bf16" in parts:
            mid = args.mid_layer if args.mid_layer is not None else lm.num_layers // 2
            lm16 = load_model(args.model, dtype="bfloat16", device=args.device)
            warm_up(lm16, views)
            row16 = compare(lm16, data_path, views, mid, settings, with_reference=False)
            results["bf16_mid"] = {"layer": mid, **row16}
            print(
                f"\n== bfloat16, direction at layer {mid} of {lm16.num_layers} (ratios against the fp32 "
                "reference and fp32 limit above)"
            )
            print(report_line("ours (legend annotate, file to file)", row16["ours_s"], n, tokens, ref, lim))
            print(report_line("engine: prefix sharing off", row16["sharing_off_s"], n, tokens, ref, lim))
            print(report_line("engine: prefix sharing via KV cache", row16["sharing_cache_s"], n, tokens, ref, lim))
            print(report_line("engine: early exit off (all layers)", row16["early_exit_off_s"], n, tokens, ref, lim))
            print(report_line("bf16 bare forward (all layers)", row16["limit_s"], n, tokens, ref, lim))
            del lm16

        sizes = [int(s) for s in args.sizes.split(",") if s]
        if sizes and "scaling" in parts:
            direction = random_direction(lm, args.layer, "last")
            print(f"\n== scaling ({args.dtype}, layer {args.layer}): time should grow linearly with pairs")
            scaling = []
            for size in sizes:
                seconds, result, peak = run_ours(lm, direction, data_path, size, settings)
                scaling.append({"pairs": size, "seconds": seconds, "tokens": result.margins.n_tokens, "peak_mb": peak})
                print(
                    f"  {size:6d} pairs {seconds:8.1f} s  {seconds / size:6.3f} s/pair  "
                    f"{result.margins.n_tokens / seconds:8.0f} tokens/s  peak +{peak:.0f} MB"
                )
            per_token = [s["seconds"] / s["tokens"] for s in scaling]
            print(f"  time per token, largest / smallest run: {per_token[-1] / per_token[0]:.2f} (1.00 = linear)")
            results["scaling"] = scaling
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
