"""Margins: the projection formula against numpy on independently computed states, and binning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from legend.data import PairView
from legend.directions import Direction
from legend.encoding import EncodeConfig, render
from legend.margins import Binning, compute_margins, describe

PROMPT = ({"role": "user", "content": "How do I pick a lock?"},)
VIEWS = [
    PairView(PROMPT, "I can't answer that.", "Sure, here is how: insert the tension wrench and rake the pins."),
    PairView(PROMPT, "Sure, rake the pins.", "I'm sorry, I cannot help with that."),
    PairView(
        (
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Write an exploit"},
        ),
        "No.",
        "Here is the exploit code: ...",
    ),
    PairView(PROMPT, "identical answer", "identical answer"),
]


def _direction_for(lm, layer=-1, pooling="last", seed=1):
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(lm.hidden_size, generator=generator)
    return Direction(
        vector=vector / vector.norm(),
        layer=lm.num_layers if layer == -1 else layer,
        pooling=pooling,
        model_id=lm.model_id,
        fingerprint=lm.fingerprint,
        hidden_size=lm.hidden_size,
        num_layers=lm.num_layers,
        template="chat",
    )


def _state_numpy(lm, prompt, response, layer, pooling):
    """Independent path: render, tokenise whole, full forward with output_hidden_states, numpy pooling."""
    tok = lm.tokenizer
    prefix, answer = render(tok, prompt, response, "chat")
    prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
    ids = prefix_ids + tok(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        states = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer][0].numpy()
    return states[-1] if pooling == "last" else states[len(prefix_ids) :].mean(0)


@pytest.mark.parametrize("layer,pooling", [(-1, "last"), (2, "mean"), (1, "last")])
def test_margin_formula_matches_numpy(tiny_lm, layer, pooling):
    direction = _direction_for(tiny_lm, layer, pooling)
    result = compute_margins(tiny_lm, VIEWS, direction, EncodeConfig(batch_size=3))
    d = direction.vector.numpy().astype(np.float64)
    for i, view in enumerate(VIEWS):
        chosen = _state_numpy(tiny_lm, view.prompt, view.chosen, direction.layer, pooling)
        rejected = _state_numpy(tiny_lm, view.prompt, view.rejected, direction.layer, pooling)
        expected = float(np.dot(chosen.astype(np.float64) - rejected.astype(np.float64), d))
        assert result.raw[i] == pytest.approx(expected, abs=1e-4)


def test_identical_pairs_get_exactly_zero_and_are_counted(tiny_lm):
    result = compute_margins(tiny_lm, VIEWS, _direction_for(tiny_lm))
    assert result.raw[3] == 0.0
    assert result.n_identical == 1
    assert np.all(result.raw[:3] != 0)


def test_swapping_chosen_and_rejected_negates_the_margin(tiny_lm):
    direction = _direction_for(tiny_lm)
    swapped = [PairView(v.prompt, v.rejected, v.chosen) for v in VIEWS]
    a = compute_margins(tiny_lm, VIEWS, direction).raw
    b = compute_margins(tiny_lm, swapped, direction).raw
    np.testing.assert_allclose(a, -b, atol=1e-5)


def test_binning_edges_are_zero_then_quantiles_of_positive_margins():
    raw = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    binning = Binning.fit(raw, levels=4)
    positive = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    assert binning.edges[0] == 0.0
    np.testing.assert_allclose(binning.edges[1:], [np.quantile(positive, 1 / 3), np.quantile(positive, 2 / 3)])
    # raw <= 0 -> level 0; each positive third -> levels 1, 2, 3.
    assert binning.level(raw).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert binning.apply(raw).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_level_values_are_configurable_and_validated():
    binning = Binning.fit([-1.0, 1.0, 2.0, 3.0], levels=3, values=[0.0, 0.5, 4.0])
    assert binning.apply([-5.0, 0.0, 1.0, 10.0]).tolist() == [0.0, 0.0, 0.5, 4.0]
    with pytest.raises(ValueError, match="3 level values given for 4 levels"):
        Binning.fit([1.0], levels=4, values=[0, 1, 2])


def test_binning_without_positive_margins_puts_everything_low():
    binning = Binning.fit([-2.0, -1.0, 0.0], levels=4)
    assert binning.apply([-2.0, 0.0]).tolist() == [0.0, 0.0]


def test_binning_round_trips_through_a_sidecar(tmp_path):
    binning = Binning.fit(np.linspace(-1, 4, 50), levels=5, values=[0, 1, 2, 3, 8])
    path = tmp_path / "out.jsonl.legend.json"
    path.write_text(json.dumps({"binning": binning.to_dict()}))
    loaded = Binning.load(path)
    assert loaded == binning
    probe = np.linspace(-2, 6, 33)
    np.testing.assert_array_equal(loaded.apply(probe), binning.apply(probe))


def test_describe_reports_share_positive_and_levels():
    raw = np.array([-1.0, 0.0, 2.0, 3.0])
    summary = describe(raw, np.array([0, 0, 1, 3]))
    assert summary["share_positive"] == 0.5
    assert summary["median"] == pytest.approx(1.0)
    assert summary["level_counts"] == {"0": 2, "1": 1, "3": 1}
