"""Poolings: the built-ins against a hand computation, and a pooling registered from outside the package used
through the CLI (`legend direction --pooling`), checked against numpy pooling of `output_hidden_states`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from legend.encoding import POOLINGS, EncodeConfig, Span, encode, register_pooling, render, template_kind
from legend.models import load_model


def test_builtin_poolings_by_hand():
    states = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    spans = [Span(text=0, row=1, start=2, end=5), Span(text=1, row=0, start=0, end=1)]
    np.testing.assert_array_equal(POOLINGS["last"](states, spans).numpy(), [states[1, 4].numpy(), states[0, 0].numpy()])
    np.testing.assert_allclose(POOLINGS["mean"](states, spans).numpy(), [states[1, 2:5].mean(0), states[0, 0]])


def pool_max(states: torch.Tensor, spans) -> torch.Tensor:
    return torch.stack([states[s.row, s.start : s.end].max(0).values for s in spans])


@pytest.fixture
def max_pooling():
    register_pooling("max", pool_max, description="the element-wise maximum over the answer tokens (a test)")
    yield
    POOLINGS.unregister("max")


def test_unknown_pooling_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="unknown pooling 'median'; choose from last, mean"):
        EncodeConfig(poolings=("median",))


def test_a_pooling_registered_from_outside_is_used_by_encode_and_the_cli(tmp_path, tiny_cli_model, max_pooling):
    from legend.cli import app

    model_dir, _ = tiny_cli_model
    lm = load_model(str(model_dir))
    rows = [
        {"question": f"How do I pick lock {i}?", "harmful": f"Sure, rake lock {i} hard.", "harmless": "I can't help."}
        for i in range(6)
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(
        app,
        ["direction", "--pairs", str(pairs), "--out", str(tmp_path / "dir"), "-m", str(model_dir), "--layer", "3",
         "--pooling", "max", "--estimator", "mean_difference", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "dir" / "config.json").read_text())
    assert config["pooling"] == "max" and config["layer"] == 3
    from safetensors.torch import load_file

    vector = load_file(str(tmp_path / "dir" / "direction.safetensors"))["direction"].double().numpy()

    # Independently: max over the answer positions of output_hidden_states[3], per text.
    kind = template_kind(lm.tokenizer, "auto")

    def pooled(question: str, answer: str) -> np.ndarray:
        prefix, text = render(lm.tokenizer, [{"role": "user", "content": question}], answer, kind)
        prefix_ids = lm.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        ids = prefix_ids + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hidden = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[3][0].double().numpy()
        return hidden[len(prefix_ids) :].max(axis=0)

    harmless = np.stack([pooled(r["question"], r["harmless"]) for r in rows])
    harmful = np.stack([pooled(r["question"], r["harmful"]) for r in rows])
    expected = harmless.mean(0) - harmful.mean(0)
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(vector, expected, atol=1e-5)
    # The same pooling through encode(): the engine's batched path gives the same vectors.
    items = [([{"role": "user", "content": r["question"]}], r["harmless"]) for r in rows]
    got = encode(lm, items, EncodeConfig(layers=(3,), poolings=("max",), batch_size=4)).get(3, "max").double().numpy()
    np.testing.assert_allclose(got, harmless, atol=1e-5)
