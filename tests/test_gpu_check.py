"""benchmarks/gpu_check.py as CI runs it: `--device cpu --small` (a tiny random model, a few pairs, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_run_gives_sane_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--small", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    # Only torch/transformers: legend.encoding and legend.models must not pull datasets, trl, pyarrow or pandas.
    assert result["imports_ok"] is True and result["imported_heavy_modules"] == []
    data = result["data"]
    assert data["pairs"] == 8 and data["paper_pairs"] == 4
    # Prefix sharing runs each prompt once: fewer tokens than both full texts, more than the answers alone.
    assert 0 < data["tokens_run_by_ours"] < data["tokens_full_texts"]
    for name in ("ours", "bare", "paper"):
        assert result["seconds"][name] > 0
        assert result["tokens_per_second"][name] > 0
    ratio = result["ratio_per_token"]
    assert ratio["ours_vs_bare"] == result["tokens_per_second"]["ours"] / result["tokens_per_second"]["bare"]
    assert result["peak_bf16_tflops"] is None and all(value is None for value in result["mfu"].values())
    check = result["margins_vs_cpu_fp32"]
    # On the CPU the fp32 "device" run is the reference computation itself; bf16 differs, but not wildly.
    assert check["float32"]["margin_relative_l2"] < 1e-6
    assert 0 < check["bfloat16"]["margin_relative_l2"] < 0.5
    assert check["bfloat16"]["sign_agreement"] >= 0.5


def test_gpu_check_takes_the_peak_from_the_flag(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert gpu_check.peak_tflops("cpu", 100.0) == (100.0, "--peak-tflops")
    assert gpu_check.peak_tflops("cpu", None)[0] is None
    pairs = gpu_check.synthetic_pairs(200, 1000, seed=0)
    prompts = sorted(len(p) for p, _, _ in pairs)
    assert 90 <= prompts[100] <= 180  # hh-rlhf-like: the bundled sample's median prompt is 128 tokens
    assert pairs == gpu_check.synthetic_pairs(200, 1000, seed=0)
