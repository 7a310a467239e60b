"""Direction selection: the sweep finds a planted layer/pooling/estimator, uses one encoding pass,
respects explicit overrides, and `--select-on` chooses on dev and reports on test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from legend.data import ContrastPair, PairView
from legend.directions import ContrastEmbeddings, split_indices
from legend.encoding import EncodeConfig
from legend.selection import (
    Candidate,
    all_candidates,
    candidate_layers,
    select_direction,
    select_on_preferences,
    sweep,
    sweep_embeddings,
)

LAYERS = (1, 2, 3, 4)
POOLINGS = ("last", "mean")
ESTIMATORS = ("mean_difference", "pca", "logistic")


def _noise_embeddings(n: int, hidden: int, rng: np.random.Generator) -> ContrastEmbeddings:
    """Harmless and harmful drawn independently from the same distribution at every key: no signal."""
    harmless, harmful = {}, {}
    for layer in LAYERS:
        for pooling in POOLINGS:
            harmless[(layer, pooling)] = torch.from_numpy(rng.normal(size=(n, hidden))).float()
            harmful[(layer, pooling)] = torch.from_numpy(rng.normal(size=(n, hidden))).float()
    return ContrastEmbeddings(harmless=harmless, harmful=harmful, n_truncated=0)


def test_sweep_finds_the_planted_layer_pooling_and_estimator():
    # Only (layer 3, mean) carries the concept, and only a probe can read it: dim 1 separates the two
    # sides cleanly (shift 0.5, noise 0.05) while dim 0 has a larger shift (1) drowned in noise (std 10),
    # so the mean difference and the PCA axis point mostly along the useless dim 0.
    rng = np.random.default_rng(0)
    n, hidden = 100, 6
    emb = _noise_embeddings(n, hidden, rng)
    harmful = rng.normal(size=(n, hidden))
    harmless = rng.normal(size=(n, hidden))
    harmful[:, 0], harmless[:, 0] = rng.normal(0, 10, n), rng.normal(1, 10, n)
    harmful[:, 1], harmless[:, 1] = rng.normal(0, 0.05, n), rng.normal(0.5, 0.05, n)
    emb.harmless[(3, "mean")] = torch.from_numpy(harmless).float()
    emb.harmful[(3, "mean")] = torch.from_numpy(harmful).float()

    result = sweep_embeddings(emb, all_candidates(LAYERS, POOLINGS, ESTIMATORS), test_fraction=0.2, seed=0)

    assert len(result.rows) == len(LAYERS) * len(POOLINGS) * len(ESTIMATORS)
    assert (result.best.layer, result.best.pooling, result.best.estimator) == (3, "mean", "logistic")
    assert result.best.accuracy == 1.0
    assert result.row(3, "mean", "mean_difference").accuracy < 0.8
    # The table's accuracy is the share of validation pairs projected the right way (numpy, by hand).
    _, validation = split_indices(n, 0.2, 0)
    train = np.setdiff1d(np.arange(n), validation)
    key = (2, "last")
    h, f = emb.harmless[key].double().numpy(), emb.harmful[key].double().numpy()
    v = h[train].mean(0) - f[train].mean(0)
    v /= np.linalg.norm(v)
    expected = float((((h[validation] - f[validation]) @ v) > 0).mean())
    assert result.row(2, "last", "mean_difference").accuracy == pytest.approx(expected)


def test_saturated_ties_fall_back_to_effect_size_then_the_papers_choice():
    # A clean mean shift at layer 2 (last token): every estimator separates perfectly there, so accuracy
    # and AUC tie at 1.0 and the rule must still pick the layer by effect size, then mean_difference.
    rng = np.random.default_rng(1)
    n, hidden = 80, 5
    emb = _noise_embeddings(n, hidden, rng)
    harmful = rng.normal(size=(n, hidden))
    emb.harmful[(2, "last")] = torch.from_numpy(harmful).float()
    emb.harmless[(2, "last")] = torch.from_numpy(
        harmful + np.r_[8.0, np.zeros(hidden - 1)] + rng.normal(0, 0.1, (n, hidden))
    ).float()
    # A weaker copy of the signal at layer 4: also perfect on accuracy/AUC, but a smaller effect size.
    emb.harmful[(4, "last")] = emb.harmful[(2, "last")].clone()
    emb.harmless[(4, "last")] = torch.from_numpy(
        harmful + np.r_[8.0, np.zeros(hidden - 1)] + rng.normal(0, 1.0, (n, hidden))
    ).float()
    result = sweep_embeddings(emb, all_candidates(LAYERS, POOLINGS, ("mean_difference", "pca")), seed=0)
    assert result.row(4, "last", "mean_difference").accuracy == 1.0
    assert result.row(4, "last", "mean_difference").auc == 1.0
    assert (result.best.layer, result.best.pooling) == (2, "last")
    assert result.row(2, "last", "pca").accuracy == 1.0


def test_candidate_layers_stride_keeps_the_last_layer():
    assert candidate_layers(30) == tuple(range(1, 31))
    assert candidate_layers(30, 4) == (2, 6, 10, 14, 18, 22, 26, 30)
    assert candidate_layers(4, layers=(-1, 2)) == (4, 2)
    with pytest.raises(ValueError, match="stride"):
        candidate_layers(4, 0)


# ---------------------------------------------------------------- with the tiny model


def _pairs(n: int = 10) -> list[ContrastPair]:
    return [
        ContrastPair(
            question=f"How do I do thing {i}?",
            harmful=f"Sure, here is how to do thing {i}: step one.",
            harmless=f"I'm sorry, but I cannot help with thing {i}.",
        )
        for i in range(n)
    ]


class ForwardCounter:
    """Counts forward calls of the base model (one per batch) while active."""

    def __init__(self, lm):
        self.lm, self.calls = lm, 0

    def __enter__(self):
        self.handle = self.lm.model.base_model.register_forward_pre_hook(self._count)
        return self

    def _count(self, *_):
        self.calls += 1

    def __exit__(self, *_):
        self.handle.remove()


def test_sweep_uses_one_encoding_pass(tiny_lm, monkeypatch):
    import legend.selection.sweeps as sweep_module
    from legend.directions import embed_contrast_pairs

    pairs = _pairs(10)
    passes = []
    real = sweep_module.embed_contrast_pairs
    monkeypatch.setattr(
        sweep_module, "embed_contrast_pairs", lambda lm, p, config: passes.append(config) or real(lm, p, config)
    )
    with ForwardCounter(tiny_lm) as sweep_count:
        result, embeddings = sweep(tiny_lm, pairs, encoding=EncodeConfig(batch_size=64))
    with ForwardCounter(tiny_lm) as single_count:
        embed_contrast_pairs(tiny_lm, pairs, EncodeConfig(layers=(-1,), batch_size=64))
    assert len(passes) == 1 and passes[0].layers == (1, 2, 3, 4) and passes[0].poolings == ("last", "mean")
    assert sweep_count.calls == single_count.calls >= 1
    assert len(result.rows) == 4 * 2 * 3
    assert set(embeddings.harmless) == {(layer, p) for layer in (1, 2, 3, 4) for p in ("last", "mean")}


def test_overrides_fix_their_dimension(tiny_lm):
    direction = select_direction(tiny_lm, _pairs(10), layer=2, estimator="pca", encoding=EncodeConfig(batch_size=64))
    rows = direction.extra["sweep"]
    assert {(r["layer"], r["estimator"]) for r in rows} == {(2, "pca")}
    assert {r["pooling"] for r in rows} == {"mean"}  # unset: the recommended recipe's pooling
    assert direction.layer == 2 and direction.estimator == "pca"
    assert direction.extra["selection"]["fixed"] == {"layer": 2, "estimator": "pca"}
    assert direction.extra["selection"]["chosen"]["pooling"] == direction.pooling
    # The saved artifact keeps the whole table.
    assert direction.heldout["n_test"] == 2


def test_cli_select_auto_and_override(tiny_lm, tmp_path):
    from legend.cli import app
    from legend.directions import Direction

    model_dir = tmp_path / "model"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p.__dict__) + "\n" for p in _pairs(10)))
    out = tmp_path / "dir"
    result = CliRunner().invoke(
        app,
        [
            "direction",
            "--pairs",
            str(pairs_file),
            "--out",
            str(out),
            "-m",
            str(model_dir),
            "--select",
            "auto",
            "--pooling",
            "mean",
            "--layer-stride",
            "2",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert {(r["layer"], r["pooling"]) for r in config["extra"]["sweep"]} == {(2, "mean"), (4, "mean")}
    assert len(config["extra"]["sweep"]) == 2  # the recipe's estimator: mean difference
    assert config["pooling"] == "mean" and "selected layer" in result.output
    selection = Direction.load(out).extra["selection"]
    assert "out-of-bag effect size" in selection["rule"] and selection["n_resamples"] == 200
    assert "stability" in result.output
    bad = CliRunner().invoke(
        app,
        ["direction", "--pairs", str(pairs_file), "--out", str(out), "-m", str(model_dir), "--select", "best", "-q"],
    )
    assert bad.exit_code == 2 and "--select" in bad.output


# ---------------------------------------------------------------- select-on


def test_select_on_chooses_on_dev_and_reports_on_test():
    # Two candidates separate the contrast pairs equally (layer 1 along e0, layer 2 along e1). On the
    # preference pairs, layer 1 agrees on every dev pair and on no test pair; layer 2 agrees on 60% of
    # dev and every test pair. Selection must look at dev only: it picks layer 1 and reports 0.0 on test.
    rng = np.random.default_rng(2)
    n_contrast, hidden, n_pref = 30, 4, 40
    harmless, harmful = {}, {}
    for layer, axis in ((1, 0), (2, 1)):
        base = rng.normal(size=(n_contrast, hidden))
        harmful[(layer, "last")] = torch.from_numpy(base).float()
        harmless[(layer, "last")] = torch.from_numpy(base + 5.0 * np.eye(hidden)[axis]).float()
    emb = ContrastEmbeddings(harmless=harmless, harmful=harmful, n_truncated=0)
    result = sweep_embeddings(emb, [Candidate(1, "last", "mean_difference"), Candidate(2, "last", "mean_difference")])
    assert result.row(1, "last", "mean_difference").accuracy == result.row(2, "last", "mean_difference").accuracy == 1.0

    dev, test = split_indices(n_pref, 0.5, 7)
    sign1 = np.where(np.isin(np.arange(n_pref), dev), 1.0, -1.0)
    sign2 = np.ones(n_pref)
    sign2[dev[: round(0.4 * len(dev))]] = -1.0
    chosen, rejected = {}, {}
    for layer, axis, sign in ((1, 0, sign1), (2, 1, sign2)):
        rej = rng.normal(size=(n_pref, hidden))
        rejected[(layer, "last")] = torch.from_numpy(rej).float()
        chosen[(layer, "last")] = torch.from_numpy(
            rej + (sign * rng.uniform(1, 2, n_pref))[:, None] * np.eye(hidden)[axis] * 10
        ).float()
    record = select_on_preferences(result, emb, chosen, rejected, dev_fraction=0.5, seed=7)

    assert (result.best.layer, result.best.estimator) == (1, "mean_difference")
    assert record["dev_share_positive"] == 1.0 and record["test_share_positive"] == 0.0
    assert record["n_dev"] == len(dev) and record["n_test"] == len(test)
    assert sorted(np.asarray(record["test_rows"]) - 1) == sorted(test.tolist())
    # Layer 2's dev agreement, by hand: the share of its dev pairs whose margin along its direction is positive.
    h, f = harmless[(2, "last")].double().numpy(), harmful[(2, "last")].double().numpy()
    v = h.mean(0) - f.mean(0)
    margins = (chosen[(2, "last")].double().numpy()[dev] - rejected[(2, "last")].double().numpy()[dev]) @ v
    assert result.row(2, "last", "mean_difference").dev_share_positive == pytest.approx(float((margins > 0).mean()))
    assert result.row(2, "last", "mean_difference").dev_share_positive == pytest.approx(0.6)


def test_select_on_encodes_the_preferences_once(tiny_lm, monkeypatch):
    import legend.selection.preferences as preferences

    views = [
        PairView(
            prompt=({"role": "user", "content": f"Help me with thing {i}"},),
            chosen=f"I'm sorry, I cannot help with thing {i}.",
            rejected=f"Sure, here is thing {i}.",
        )
        for i in range(8)
    ]
    calls = []
    real = preferences.encode
    monkeypatch.setattr(
        preferences, "encode", lambda lm, items, config: calls.append(config) or real(lm, items, config)
    )
    direction = select_direction(
        tiny_lm, _pairs(10), select_on=views, estimator="mean_difference", encoding=EncodeConfig(batch_size=64)
    )
    assert len(calls) == 1 and calls[0].layers == (1, 2, 3, 4) and calls[0].poolings == ("last", "mean")
    selection_record = direction.extra["selection"]
    assert selection_record["by"] == "preferences" and selection_record["n_dev"] + selection_record["n_test"] == 8
    chosen_row = next(
        r
        for r in direction.extra["sweep"]
        if (r["layer"], r["pooling"], r["estimator"]) == (direction.layer, direction.pooling, "mean_difference")
    )
    assert chosen_row["dev_share_positive"] == max(r["dev_share_positive"] for r in direction.extra["sweep"])


# ---------------------------------------------------------------- the band rule and cross-source validation


def _band_embeddings(rng, n=60, hidden=6, layers=tuple(range(1, 9)), signal=(2, 3)):
    """Signal in the `signal` layers only (mean pooling), noise elsewhere."""
    harmless, harmful = {}, {}
    for layer in layers:
        for pooling in POOLINGS:
            base = rng.normal(size=(n, hidden))
            shift = np.zeros(hidden)
            if pooling == "mean" and layer in signal:
                shift[0] = 1.5
            harmful[(layer, pooling)] = torch.from_numpy(base).float()
            harmless[(layer, pooling)] = torch.from_numpy(base + shift + rng.normal(0, 1.0, (n, hidden))).float()
    return ContrastEmbeddings(harmless=harmless, harmful=harmful, n_truncated=0), layers


def test_band_rule_finds_a_deep_informative_band():
    from legend.selection import band_choice

    rng = np.random.default_rng(4)
    emb, layers = _band_embeddings(rng, signal=(5, 6))
    result = sweep_embeddings(emb, all_candidates(layers, POOLINGS, ("mean_difference", "pca")), seed=0)
    chosen = band_choice(result.rows, result.n_validation, width=1)
    assert (chosen.layer, chosen.pooling, chosen.estimator) in (
        (5, "mean", "mean_difference"),
        (6, "mean", "mean_difference"),
    )


def test_band_rule_finds_the_informative_band_and_ignores_an_isolated_spike():
    from legend.selection import band_choice, band_scores

    rng = np.random.default_rng(3)
    emb, layers = _band_embeddings(rng)
    result = sweep_embeddings(emb, all_candidates(layers, POOLINGS, ("mean_difference",)), seed=0)
    # make layer 7 (last pooling) an isolated spike: the best single row, with no support around it
    spike = result.row(7, "last", "mean_difference")
    spike.effect_size = max(r.effect_size for r in result.rows) + 0.5
    assert best_single(result.rows) is spike
    chosen = band_choice(result.rows, result.n_validation, width=1, min_depth=0.0)
    assert (chosen.layer, chosen.pooling) in ((2, "mean"), (3, "mean"))
    # by default band centres are in the upper half (layers 4..7 of 8 with a full band): the shallow
    # band is not eligible, and the spike at 7 alone does not carry its band
    deep = band_choice(result.rows, result.n_validation, width=1)
    assert 4 <= deep.layer <= 7 and deep is not spike
    # the band score is the mean over the neighbours, by hand
    scores = band_scores(result.rows, width=1)
    expected = np.mean([result.row(layer, "mean", "mean_difference").effect_size for layer in (1, 2, 3)])
    assert scores[Candidate(2, "mean", "mean_difference")] == pytest.approx(expected)


def best_single(rows):
    return max(rows, key=lambda r: r.effect_size)


def test_band_rule_keeps_mean_difference_unless_another_estimator_wins_clearly():
    from legend.selection import SweepRow, band_choice

    def rows(pca_effect):
        return [
            SweepRow(layer, "mean", est, 1.0, 1.0, effect)
            for layer in (1, 2, 3)
            for est, effect in (("mean_difference", 2.0), ("pca", pca_effect))
        ]

    # se = sqrt((1 + 2^2/2) / 30) ~ 0.32: pca at 2.3 is within 2 se, at 3.0 it is clearly better
    assert band_choice(rows(2.3), n_validation=30).estimator == "mean_difference"
    assert band_choice(rows(3.0), n_validation=30).estimator == "pca"


def test_cross_source_validation_fits_on_one_source_and_scores_the_other():
    # source A separates along dim 0 only; source B along dim 1 only (a "template" each): a direction
    # fitted on one source does not transfer, except where both carry the same signal (layer 2).
    rng = np.random.default_rng(5)
    n, hidden = 40, 4
    emb = _noise_embeddings(2 * n, hidden, rng)
    for layer in LAYERS:
        base = rng.normal(size=(2 * n, hidden))
        shift = np.zeros((2 * n, hidden))
        if layer == 2:
            shift[:, 2] = 3.0  # shared by both sources
        else:
            shift[:n, 0], shift[n:, 1] = 3.0, 3.0
        emb.harmful[(layer, "mean")] = torch.from_numpy(base).float()
        emb.harmless[(layer, "mean")] = torch.from_numpy(base + shift + rng.normal(0, 0.5, base.shape)).float()
    groups = ["a"] * n + ["b"] * n
    cands = all_candidates(LAYERS, ("mean",), ("mean_difference",))
    split = sweep_embeddings(emb, cands, seed=0)
    cross = sweep_embeddings(emb, cands, groups=groups)
    assert cross.extra["validation"] == "cross-source" and cross.extra["sources"] == ["a", "b"]
    assert split.row(3, "mean", "mean_difference").accuracy > 0.9  # a random split cannot tell
    assert cross.best.layer == 2 and cross.row(3, "mean", "mean_difference").effect_size < 1.0
    # by hand: fit on b, score a at layer 2
    key = (2, "mean")
    h, f = emb.harmless[key].double().numpy(), emb.harmful[key].double().numpy()
    v = h[n:].mean(0) - f[n:].mean(0)
    v /= np.linalg.norm(v)
    acc_a = float((((h[:n] - f[:n]) @ v) > 0).mean())
    v = h[:n].mean(0) - f[:n].mean(0)
    v /= np.linalg.norm(v)
    acc_b = float((((h[n:] - f[n:]) @ v) > 0).mean())
    assert cross.row(2, "mean", "mean_difference").accuracy == pytest.approx((acc_a + acc_b) / 2)
