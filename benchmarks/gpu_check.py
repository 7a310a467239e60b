"""GPU check: legend's engine on a Llama-3-8B-shaped model in bf16, against a bare forward and the paper's batch-1 way.

    python benchmarks/gpu_check.py --json runs/gpu_check.json            # one GPU, at most ~8 minutes
    python benchmarks/gpu_check.py --device cpu --small                   # smoke test (seconds; CI runs it)
    python benchmarks/gpu_check.py --peak-tflops 989 --pairs 1024          # a chip missing from the peak table

Needs only torch and transformers (accelerate/safetensors are not used): it imports legend.encoding
and legend.models, which pull neither `datasets` nor `trl` (checked, and reported as
`imports_ok` in the JSON). No weights are downloaded: the model is randomly initialised on the
device, and the pairs are synthetic token ids whose prompt / chosen / rejected lengths follow the
bundled hh-rlhf sample (log-normal fits of its SmolLM2 token counts: prompt median 128, chosen 28,
rejected 37). Speed does not depend on the values of the weights or of the direction.

It prints one JSON document (also written to --json) with:
  - throughput (tokens/s of the full texts of both answers, the unit of docs/speed.md) of
    ours: legend's `encode_tokenized` with prefix sharing and early exit at the last layer;
    bare: a batched forward of the base model over the full texts (all layers, no hooks, same batching);
    paper: batch 1, the whole model with output_hidden_states, each text separately (on the first
    `--paper-pairs` pairs; per-token rates are compared);
  - ratios ours/bare and ours/paper per token;
  - model FLOP utilisation: 2 * (non-embedding parameters) * tokens / seconds / peak, with the
    peak bf16 dense TFLOP/s from a table by device name (or --peak-tflops); `mfu_full_texts`
    counts the tokens of the full texts (what the job needs), `mfu_run` the tokens ours actually ran;
  - margins on the device against CPU fp32 for a small random Llama (relative L2 difference of
    the margins and of the pooled vectors), in fp32 and in bf16 on the device.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

# Dense bf16 peak TFLOP/s by a substring of torch.cuda.get_device_name() (vendor data sheets, no sparsity).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
}

# Log-normal fits (mean and std of the log token count) of the bundled hh-rlhf sample under SmolLM2's tokenizer.
HH_LENGTHS = {"prompt": (4.78, 0.74), "chosen": (3.37, 0.87), "rejected": (3.54, 0.93)}


def llama3_8b_config(small: bool):
    from transformers import LlamaConfig

    if small:
        return LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
        )
    return LlamaConfig(  # the shape of meta-llama/Meta-Llama-3-8B
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


class _Tokenizer:
    """All the engine needs of a tokenizer once texts are token ids: the pad id."""

    pad_token_id = 0
    chat_template = None


def random_model(config, device: str, dtype: torch.dtype, seed: int = 0):
    """A randomly initialised LlamaForCausalLM built directly on `device` in `dtype` (no CPU copy, no weights)."""
    from transformers import LlamaForCausalLM

    from legend.models import LoadedModel

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    return LoadedModel(model=model, tokenizer=_Tokenizer(), model_id="random-llama", fingerprint="random")


def synthetic_pairs(n: int, vocab: int, seed: int, scale: float = 1.0) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token ids with hh-rlhf-like lengths (`scale` shrinks them for the smoke test)."""
    generator = torch.Generator().manual_seed(seed)

    def length(kind: str) -> int:
        mu, sigma = HH_LENGTHS[kind]
        value = math.exp(mu + sigma * torch.randn(1, generator=generator).item()) * scale
        return int(min(max(round(value), 2), 1500))

    def ids(count: int) -> list[int]:
        return torch.randint(10, vocab, (count,), generator=generator).tolist()

    return [(ids(length("prompt")), ids(length("chosen")), ids(length("rejected"))) for _ in range(n)]


def texts_of(pairs):
    """Every (prompt + chosen), then every (prompt + rejected), as legend's TokenizedText."""
    from legend.encoding import TokenizedText

    chosen = [TokenizedText(tuple(p + c), len(p), False) for p, c, _ in pairs]
    rejected = [TokenizedText(tuple(p + r), len(p), False) for p, _, r in pairs]
    return chosen + rejected


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def run_ours(lm, texts, config):
    from legend.encoding import encode_tokenized

    return encode_tokenized(lm, texts, config)


def run_bare(lm, texts, config, device: str) -> None:
    """A batched forward of the base model over the full texts, batched by legend's planner, all layers."""
    from legend.encoding import plan_batches

    lengths = [len(t.ids) for t in texts]
    with torch.inference_mode():
        for batch in plan_batches(lengths, config.batch_size, config.max_batch_tokens, config.max_padding):
            width = max(lengths[i] for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids[row, : lengths[index]] = torch.tensor(texts[index].ids)
                mask[row, : lengths[index]] = 1
            lm.model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)


def run_paper(lm, texts, device: str) -> None:
    """The paper's released approach: batch 1, the whole model with every hidden state, each text alone."""
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor([text.ids], device=device)
            lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1].float().cpu()


def margins(lm, texts, n_pairs: int, config, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(margins, pooled vectors) of the pairs: (chosen - rejected) . direction, in float64 on the CPU."""
    vectors = run_ours(lm, texts, config).get(-1, "last").double()
    return (vectors[:n_pairs] - vectors[n_pairs:]) @ direction, vectors


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def device_margins_check(device: str, pairs: int, seed: int, tiny: bool = False) -> dict[str, Any]:
    """Margins of a small random Llama on `device` (fp32 and bf16) against the same model in fp32 on the CPU."""
    from legend.encoding import EncodeConfig

    config = llama3_8b_config(small=True)
    if not tiny:
        config.hidden_size, config.intermediate_size, config.num_hidden_layers = 256, 512, 4
    data = synthetic_pairs(pairs, config.vocab_size, seed + 1, scale=0.5)
    texts = texts_of(data)
    encode = EncodeConfig(layers=(-1,), batch_size=8)
    reference = random_model(config, "cpu", torch.float32, seed)
    state = reference.model.state_dict()
    direction = torch.randn(config.hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    direction /= direction.norm()
    cpu_margins, cpu_vectors = margins(reference, texts, pairs, encode, direction)
    shape = f"random Llama, {config.num_hidden_layers} layers, hidden {config.hidden_size}"
    out: dict[str, Any] = {"pairs": pairs, "model": shape, "cpu_fp32_reference": True}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        lm = random_model(config, device, dtype, seed)
        lm.model.load_state_dict(state)  # the same weights (rounded to bf16 for the bf16 run)
        got_margins, got_vectors = margins(lm, texts, pairs, encode, direction)
        out[name] = {
            "margin_relative_l2": relative(got_margins, cpu_margins),
            "vector_relative_l2": relative(got_vectors, cpu_vectors),
            "sign_agreement": float((torch.sign(got_margins) == torch.sign(cpu_margins)).double().mean()),
        }
        del lm
    return out


def peak_tflops(device: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--peak-tflops"
    if not device.startswith("cuda"):
        return None, "no table entry for a CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name(torch.device(device))
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value, f"table: {key}"
    return None, f"{name} is not in the table (give --peak-tflops)"


def imported(modules=("datasets", "trl", "pyarrow", "pandas")) -> list[str]:
    return [name for name in modules if name in sys.modules]


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny random model and a few pairs (smoke test)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs for ours and bare (default 512; small: 8)")
    parser.add_argument("--paper-pairs", type=int, default=None, help="pairs for the batch-1 run (default 128)")
    parser.add_argument("--check-pairs", type=int, default=None, help="pairs of the GPU-vs-CPU margin check")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per forward (default 64; small: 4)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="padded tokens per forward (default 65536)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak, TFLOP/s")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from legend.encoding import EncodeConfig

    started = time.perf_counter()
    small = args.small
    n_pairs = args.pairs or (8 if small else 512)
    n_paper = min(args.paper_pairs or (4 if small else 128), n_pairs)
    dtype = getattr(torch, args.dtype)
    config = llama3_8b_config(small)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            "gpu_check: --device cuda, but torch sees no CUDA device (use --device cpu --small for the smoke test)"
        )
    encode = EncodeConfig(
        layers=(-1,),
        batch_size=args.batch_size or (4 if small else 64),
        max_batch_tokens=args.max_batch_tokens or (4096 if small else 65536),
    )
    build_s, lm = timed(lambda: random_model(config, args.device, dtype, args.seed), args.device)
    parameters = sum(p.numel() for p in lm.model.parameters())
    non_embedding = (
        sum(p.numel() for p in lm.model.base_model.parameters()) - lm.model.get_input_embeddings().weight.numel()
    )
    pairs = synthetic_pairs(n_pairs, config.vocab_size, args.seed, scale=0.25 if small else 1.0)
    texts = texts_of(pairs)
    paper_texts = texts_of(pairs[:n_paper])
    tokens = sum(len(t.ids) for t in texts)
    paper_tokens = sum(len(t.ids) for t in paper_texts)

    # Warm up every path once on a few pairs (CUDA context, kernels, allocator), untimed.
    warm = texts_of(pairs[:4])
    run_ours(lm, warm, encode)
    run_bare(lm, warm, encode, args.device)
    run_paper(lm, warm[:2], args.device)

    ours_s, encoded = timed(partial(run_ours, lm, texts, encode), args.device)
    bare_s, _ = timed(partial(run_bare, lm, texts, encode, args.device), args.device)
    paper_s, _ = timed(partial(run_paper, lm, paper_texts, args.device), args.device)
    peak, peak_source = peak_tflops(args.device, args.peak_tflops)

    def mfu(count: int, seconds: float) -> float | None:
        return None if peak is None else 2 * non_embedding * count / seconds / (peak * 1e12)

    run_tokens = encoded.n_forward_tokens  # prompts once, no padding
    ours_rate, bare_rate, paper_rate = tokens / ours_s, tokens / bare_s, paper_tokens / paper_s
    memory = (
        torch.cuda.max_memory_allocated(torch.device(args.device)) / 2**30 if args.device.startswith("cuda") else None
    )
    del lm, encoded
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    check_s, check = timed(
        partial(device_margins_check, args.device, args.check_pairs or (6 if small else 32), args.seed, small),
        args.device,
    )
    result: dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else "cpu",
        "torch": torch.__version__,
        "small": small,
        "model": {
            "shape": "tiny random Llama" if small else "Llama-3-8B (random weights)",
            "dtype": args.dtype,
            "parameters": parameters,
            "non_embedding_parameters": non_embedding,
            "layers": config.num_hidden_layers,
            "hidden": config.hidden_size,
            "build_seconds": build_s,
            "peak_memory_gib": memory,
        },
        "data": {
            "pairs": n_pairs,
            "paper_pairs": n_paper,
            "tokens_full_texts": tokens,
            "tokens_run_by_ours": run_tokens,
            "lengths": "synthetic, hh-rlhf-like (log-normal fits of the bundled sample)",
        },
        "encode_config": {"batch_size": encode.batch_size, "max_batch_tokens": encode.max_batch_tokens, "layer": -1},
        "seconds": {"ours": ours_s, "bare": bare_s, "paper": paper_s, "margin_check": check_s},
        "tokens_per_second": {"ours": ours_rate, "bare": bare_rate, "paper": paper_rate},
        "ratio_per_token": {"ours_vs_bare": ours_rate / bare_rate, "ours_vs_paper": ours_rate / paper_rate},
        "peak_bf16_tflops": peak,
        "peak_source": peak_source,
        "mfu": {"bare": mfu(tokens, bare_s), "paper": mfu(paper_tokens, paper_s)},
        "margins_vs_cpu_fp32": check,
        "imports_ok": not imported(),
        "imported_heavy_modules": imported(),
    }
    result["mfu"]["ours_full_texts"] = mfu(tokens, ours_s)
    result["mfu"]["ours_run"] = mfu(run_tokens, ours_s)
    result["total_seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
