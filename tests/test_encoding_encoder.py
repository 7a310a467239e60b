"""The Encoder extension point: an encoder defined here (not in legend) is registered and runs `legend annotate`
end to end, and its margins equal those of the built-in encoder, computed independently by numpy pooling of
`output_hidden_states`. Also: the per-model lock makes two threads sharing one model give exact margins."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import hh_rows, read_jsonl, write_jsonl
from legend.encoding import (
    ENCODERS,
    EncodeConfig,
    Encoded,
    Encoder,
    EncoderCapabilities,
    TransformersEncoder,
    register_encoder,
    render,
    resolve_layer,
    template_kind,
)
from legend.models import LoadedModel, as_loaded


class NumpyHiddenStates:
    """A reference encoder: one text at a time, every layer from `output_hidden_states`, pooled with numpy."""

    name: ClassVar[str] = "numpy-reference"
    capabilities: ClassVar[EncoderCapabilities] = EncoderCapabilities()

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.model_id, self.fingerprint = lm.model_id, lm.fingerprint
        self.hidden_size, self.num_layers, self.dtype_name = lm.hidden_size, lm.num_layers, lm.dtype_name
        self.tokenizer = lm.tokenizer
        self.calls = 0

    def encode(self, items: Sequence[Any], config: EncodeConfig) -> Encoded:
        self.calls += 1
        kind = template_kind(self.tokenizer, config.template)
        vectors = {(layer, p): [] for layer in config.layers for p in config.poolings}
        for prompt, response in items:
            prefix, answer = render(self.tokenizer, prompt, response, kind)
            prefix_ids = self.tokenizer(prefix, add_special_tokens=kind == "plain")["input_ids"]
            ids = prefix_ids + self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = self.lm.model(torch.tensor([ids]), output_hidden_states=True)
            for layer in config.layers:
                states = out.hidden_states[resolve_layer(layer, self.num_layers)][0].double().numpy()
                for pooling in config.poolings:
                    pooled = states[-1] if pooling == "last" else states[len(prefix_ids) :].mean(axis=0)
                    vectors[(layer, pooling)].append(pooled)
        return Encoded(
            vectors={k: torch.tensor(np.stack(v), dtype=torch.float32) for k, v in vectors.items()},
            n_texts=len(items),
        )


@pytest.fixture
def numpy_encoder(tiny_lm):
    made: list[NumpyHiddenStates] = []

    def factory(model, fallback):
        made.append(NumpyHiddenStates(tiny_lm if model is None else as_loaded(model, fallback=fallback)))
        return made[-1]

    register_encoder("numpy-reference", factory, description="numpy pooling of output_hidden_states (a test)")
    yield made
    ENCODERS.unregister("numpy-reference")


def test_the_reference_encoder_meets_the_protocol(tiny_lm):
    assert isinstance(NumpyHiddenStates(tiny_lm), Encoder)
    assert isinstance(TransformersEncoder(tiny_lm), Encoder)
    assert not isinstance(object(), Encoder)


def test_an_encoder_registered_from_outside_runs_annotate_end_to_end(tmp_path, tiny_cli_model, numpy_encoder):
    """`legend annotate --encoder numpy-reference` uses the registered encoder; margins equal the built-in's."""
    from legend.cli import app

    model_dir, direction_dir = tiny_cli_model
    data = write_jsonl(tmp_path / "pairs.jsonl", hh_rows(7))
    runner = CliRunner()
    outs = {}
    for encoder in ("transformers", "numpy-reference"):
        out = tmp_path / encoder / "out.jsonl"
        result = runner.invoke(
            app,
            ["annotate", "--direction", str(direction_dir), "--data", str(data), "--out", str(out), "-m",
             str(model_dir), "--encoder", encoder, "-q"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outs[encoder] = read_jsonl(out)
    assert numpy_encoder and numpy_encoder[0].calls >= 1  # the registered encoder did the work
    ours = np.array([row["margin_raw"] for row in outs["numpy-reference"]])
    builtin = np.array([row["margin_raw"] for row in outs["transformers"]])
    assert ours[3] == 0.0 and builtin[3] == 0.0  # the identical pair
    np.testing.assert_allclose(ours, builtin, atol=1e-4)
    assert np.abs(builtin).max() > 1e-3  # not a trivially zero comparison
    help_text = " ".join(runner.invoke(app, ["annotate", "--help"]).output.split())
    assert ENCODERS.description("transformers")[:40] in help_text  # the help is generated from the registry


def test_an_unknown_encoder_is_one_line_before_anything_loads(tmp_path, tiny_cli_model):
    from legend.cli import app

    _, direction_dir = tiny_cli_model
    data = write_jsonl(tmp_path / "pairs.jsonl", hh_rows(5))
    result = CliRunner().invoke(
        app,
        ["annotate", "--direction", str(direction_dir), "--data", str(data), "--out", str(tmp_path / "o.jsonl"),
         "--encoder", "vllm-nope"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "unknown encoder 'vllm-nope'; choose from transformers" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_two_threads_sharing_one_model_get_exact_margins(tiny_lm):
    """The capture hooks live on the shared model: without the per-model lock, concurrent forwards read each
    other's states. Each thread's margins must equal the single-threaded ones exactly."""
    from legend.data import PairView
    from legend.directions import Direction
    from legend.margins import compute_margins

    rng = np.random.default_rng(0)
    directions = []
    for layer in (2, 4):
        vector = torch.tensor(rng.standard_normal(tiny_lm.hidden_size), dtype=torch.float32)
        directions.append(Direction.for_model(tiny_lm, vector / vector.norm(), layer=layer, pooling="mean"))
    views = [
        PairView(({"role": "user", "content": f"question {i} " * (1 + i % 5)},), f"I can't {i}.", f"Sure {i} " * 3)
        for i in range(24)
    ]
    expected = [compute_margins(tiny_lm, views, d, EncodeConfig(batch_size=4)).raw for d in directions]
    got: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            got[k] = [compute_margins(tiny_lm, views, directions[k % 2], EncodeConfig(batch_size=4)).raw]
            for _ in range(3):
                got[k].append(compute_margins(tiny_lm, views, directions[k % 2], EncodeConfig(batch_size=4)).raw)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for k, runs in got.items():
        for raw in runs:
            np.testing.assert_array_equal(raw, expected[k % 2])
