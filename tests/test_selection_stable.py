"""The stable band rule (legend.selection.stable) on synthetic embeddings where the answer is known by construction:
a known informative band is found, a spike that lives on one validation split does not win (the old band rule
lands on it), a flat profile falls back to the prior depth, evidence at the edge warns; the stability figures
and the out-of-bag effect size against hand computations; `legend direction` prints and saves the stability."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from legend.directions import ContrastEmbeddings, split_indices
from legend.selection import (
    all_candidates,
    band_choice,
    repeated_answers_warning,
    stability_figures,
    stable_band_choice,
    sweep_embeddings,
)
from legend.selection.stable import BAND_WIDTH, oob_effect_sizes, resample_indices

L = 20  # band centres 10..18, prior 14


def synthetic(n: int, num_layers: int, hidden: int, signal, seed: int = 0, noise: float = 1.0):
    """Harmless/harmful {(layer, 'mean'): [n, hidden]} whose paired differences are signal(layer) · u + noise, u a
    fixed axis; `signal` gives a scalar or a length-n array (per-pair shifts) per layer."""
    rng = np.random.default_rng(seed)
    u = np.zeros(hidden)
    u[0] = 1.0
    harmless, harmful = {}, {}
    for layer in range(num_layers + 1):
        base = rng.normal(size=(n, hidden))
        shift = np.asarray(signal(layer), dtype=float).reshape(-1, 1) * u
        diff = shift + noise * rng.normal(size=(n, hidden)) / math.sqrt(2)
        harmless[(layer, "mean")] = torch.tensor(base + diff / 2, dtype=torch.float32)
        harmful[(layer, "mean")] = torch.tensor(base - diff / 2, dtype=torch.float32)
    return harmless, harmful


def old_band_choice(harmless, harmful, num_layers: int) -> int:
    """The previous rule: one seeded 80/20 split, mean effect size over the band."""
    rows = sweep_embeddings(
        ContrastEmbeddings(harmless, harmful, 0),
        all_candidates(range(1, num_layers + 1), ["mean"], ["mean_difference"]),
    ).rows
    return band_choice(rows, 12, num_layers=num_layers).layer


def test_a_known_informative_band_is_found_and_the_choice_is_stable():
    a, b = synthetic(60, L, 16, lambda layer: 1.5 if 15 <= layer <= 18 else 0.3, seed=1)
    choice = stable_band_choice(a, b, num_layers=L)
    assert choice.centre in (16, 17) and choice.stability["share_in_band"] >= 0.9
    assert choice.band == list(range(choice.centre - 2, choice.centre + 3)) and not choice.stability["warnings"]


def test_a_spike_on_one_validation_split_does_not_win():
    """At layer 12 only the 12 pairs of the seed-0 80/20 validation split differ strongly: the old rule, which
    validates on that one split, chooses near 12; bootstrap resampling sees it for what it is."""
    n = 60
    _, validation = split_indices(n, 0.2, 0)
    spike = np.full(n, 0.6)
    spike[validation] = 6.0

    def signal(layer):
        return spike if layer == 12 else (1.0 if 15 <= layer <= 18 else 0.6)

    a, b = synthetic(n, L, 16, signal, seed=2)
    assert abs(old_band_choice(a, b, L) - 12) <= BAND_WIDTH
    assert abs(stable_band_choice(a, b, num_layers=L).centre - 12) > BAND_WIDTH


def test_a_flat_profile_falls_back_to_the_prior_depth():
    a, b = synthetic(60, L, 16, lambda layer: 1.0, seed=3)
    choice = stable_band_choice(a, b, num_layers=L)
    assert choice.prior == 14.0 and choice.centre == 14
    assert choice.evidence["prior_decided"] and len(choice.candidates) > 1
    assert choice.stability["share_in_band"] >= 0.5


def test_evidence_at_the_edge_of_the_allowed_range_warns():
    a, b = synthetic(60, L, 16, lambda layer: 3.0 if layer <= 10 else 0.5, seed=4)
    choice = stable_band_choice(a, b, num_layers=L)
    assert choice.centre == 10 and any("lowest band centre allowed" in w for w in choice.stability["warnings"])


def test_stability_figures_by_hand():
    figures = stability_figures([22, 22, 21, 15, 22, 24, 22, 20, 22, 22], 22, list(range(15, 29)))
    assert (figures["share_exact"], figures["share_in_band"], figures["range"]) == (0.6, 0.9, [15, 24])
    assert not figures["at_edge"] and figures["warnings"] == []
    # Half in the band is not unstable; the lowest centre is the edge.
    figures = stability_figures([15, 16, 17, 23, 27, 25], 15, list(range(15, 29)))
    assert figures["share_in_band"] == 0.5 and figures["share_exact"] == pytest.approx(1 / 6)
    assert figures["at_edge"] and len(figures["warnings"]) == 1
    figures = stability_figures([15, 19, 23, 27, 25, 18], 15, list(range(15, 29)))
    assert figures["share_in_band"] == pytest.approx(1 / 6) and len(figures["warnings"]) == 2
    assert figures["warnings"][0].startswith("unstable layer choice: only 17% of 6 resamples")


def test_out_of_bag_effect_size_against_a_direct_computation():
    a, b = synthetic(30, 4, 8, lambda layer: 1.0, seed=5)
    draws = resample_indices(30, 3, seed=7)
    got = oob_effect_sizes(a, b, [2], "mean", draws)[1, 0]
    inbag = draws[1]
    oob = np.setdiff1d(np.arange(30), inbag)
    d = a[(2, "mean")].double() - b[(2, "mean")].double()
    v = d[inbag].mean(0)
    v = v / v.norm()
    projected = d[oob] @ v
    assert got == pytest.approx(float(projected.mean() / projected.std()), abs=1e-9)


def test_resampling_by_source_keeps_each_sources_count():
    draws = resample_indices(10, 5, 0, ["x"] * 6 + ["y"] * 4)
    assert (draws[:, :6] < 6).all() and (draws[:, 6:] >= 6).all()


def test_repeated_answers_are_warned_about():
    assert repeated_answers_warning(["I can't."] * 9 + ["No."], [f"Sure {i}" for i in range(10)]) is not None
    assert repeated_answers_warning([f"No, {i}." for i in range(10)], [f"Sure {i}" for i in range(10)]) is None


def test_cli_direction_prints_and_saves_the_stability(tiny_cli_model, tmp_path):
    from legend.cli import app
    from legend.directions import Direction

    model_dir, _ = tiny_cli_model
    rows = [{"question": f"Q{i}?", "harmful": f"Sure, step {i}.", "harmless": "I can't help."} for i in range(12)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["direction", "--pairs", str(pairs), "--out", str(tmp_path / "d"), "-m",
                                      str(model_dir), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "stability:" in text and "resamples of the contrast pairs" in text
    assert "only 1 distinct harmless answers in 12 contrast pairs" in text  # the repeated-answers warning
    direction = Direction.load(tmp_path / "d")
    selection = direction.extra["selection"]
    assert selection["chosen"]["layer"] == direction.layer == selection["centre"]
    assert 0 <= selection["stability"]["share_in_band"] <= 1 and selection["n_resamples"] == 200
    card = (tmp_path / "d" / "README.md").read_text()
    assert "stable band rule" in card and "distinct harmless answers" in card
