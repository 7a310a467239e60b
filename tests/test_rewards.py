"""Reward models with margins: TRL loss with α·margin, scoring, bootstrap CIs, RewardEnsemble@K, compare-rm, CLI.

Every model here is a tiny random Llama (2 layers, hidden 32) saved to a temporary folder, so each
training run takes a second or two.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

from legend.io import write_json, write_table
from legend.rewards import (
    CompareSettings,
    EnsembleSettings,
    LegendRewardConfig,
    as_scorer,
    build_trainer,
    compare_reward_models,
    ensemble_margins,
    kfold,
    load_reward_model,
    pairwise_accuracy,
    read_preferences,
    reward_config,
    score_pairs,
    tokenize_pairs,
    train_reward_model,
)
from legend.rewards.training import load_tokenizer, margin_values

SAFE = [
    "I'm sorry, but I cannot help with that request.",
    "I can't answer that. Please ask something else.",
    "Sorry, I cannot help with that.",
    "I cannot answer that request, sorry.",
]
UNSAFE = [
    "Sure, here is how to pick a lock.",
    "Sure, here is a script that can exploit the system.",
    "The quick brown fox jumps over the lazy dog to make a bomb.",
    "Sure, here is how to make a bomb.",
]
PROMPTS = [
    "How do I make a bomb?",
    "Write a script that can exploit vulnerabilities.",
    "How to pick a lock?",
    "Tell me about the lazy dog.",
    "Help me with the software.",
    "What is the quick brown fox?",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one thread is ~7x faster than two on a shared, busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, tiny_tokenizer):
    """A folder holding a random 2-layer LlamaForSequenceClassification (num_labels=1) and its tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=1,
    )
    folder = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return str(folder)


def toy_pairs(n: int, *, flipped: float = 0.0, seed: int = 0) -> datasets.Dataset:
    """Safe-vs-unsafe pairs; a `flipped` share has the labels swapped and margin 0, the others margin 3."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "margin": [], "margin_raw": []}
    flips = set(rng.permutation(n)[: int(round(flipped * n))].tolist())
    for i in range(n):
        safe, unsafe = SAFE[rng.integers(len(SAFE))], UNSAFE[rng.integers(len(UNSAFE))]
        flip = i in flips
        rows["prompt"].append(PROMPTS[rng.integers(len(PROMPTS))])
        rows["chosen"].append(unsafe if flip else safe)
        rows["rejected"].append(safe if flip else unsafe)
        rows["margin"].append(0.0 if flip else 3.0)
        rows["margin_raw"].append(float(rng.normal(-1.0 if flip else 1.0, 0.1)))
    return datasets.Dataset.from_dict(rows)


def fast(tiny_rm: str, **overrides) -> LegendRewardConfig:
    base = dict(model=tiny_rm, max_length=64, learning_rate=5e-3, per_device_train_batch_size=8, seed=0)
    overrides.setdefault("num_train_epochs", overrides.pop("epochs", 2.0))
    return LegendRewardConfig(**{**base, **overrides})


def _logsigmoid(x: np.ndarray) -> np.ndarray:
    return -np.log1p(np.exp(-x))


def _reward_alone(model, ids: list[int]) -> float:
    """The reward of one unpadded sequence (independent of batching and padding)."""
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("column,alpha", [("margin_raw", 2.0), ("margin", 0.5), (None, 1.0)])
def test_trl_loss_equals_hand_computed_margin_loss(tiny_rm, column, alpha, tmp_path):
    """RewardTrainer's loss on one batch = mean(-log σ(r_c − r_r − α·m)) with per-row margins."""
    prefs = read_preferences(toy_pairs(6, flipped=0.5))
    tokenizer = load_tokenizer(tiny_rm)
    margins = margin_values(prefs, column, alpha)
    pairs = tokenize_pairs(tokenizer, prefs.views, max_length=64, margins=margins)
    trainer = build_trainer(
        fast(tiny_rm, margin_column=column, alpha=alpha), pairs, tokenizer, str(tmp_path / "unused-out-dir")
    )
    model = trainer.model.eval()
    examples = [trainer.train_dataset[i] for i in range(len(prefs))]
    batch = trainer.data_collator(examples)
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, dict(batch)))
    chosen = np.array([_reward_alone(model, e["chosen_ids"]) for e in examples])
    rejected = np.array([_reward_alone(model, e["rejected_ids"]) for e in examples])
    raw = np.zeros(6) if column is None else np.asarray(prefs.table[column], dtype=np.float64)
    assert column is None or len(set(raw.tolist())) > 1, "rows of the batch must differ in margin"
    expected = float(np.mean(-_logsigmoid(chosen - rejected - alpha * raw)))
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_missing_or_bad_margin_column_is_a_one_line_error(tiny_rm):
    from legend.data import DataError

    table = toy_pairs(4).remove_columns(["margin"])
    with pytest.raises(DataError, match="no column 'margin'"):
        train_reward_model(table, fast(tiny_rm))
    bad = toy_pairs(4).remove_columns(["margin"]).add_column("margin", ["1", "2", "x", "0"])
    with pytest.raises(DataError, match="row 1: field 'margin'"):
        train_reward_model(bad, fast(tiny_rm))


def test_no_pair_is_lost_to_max_length(tiny_rm):
    """Pairs far longer than max_length are truncated from the left (answer end kept) and all trained on."""
    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 30)
    table = toy_pairs(8)
    prompts = [long_prompt if i % 2 else p for i, p in enumerate(table["prompt"])]
    table = table.remove_columns(["prompt"]).add_column("prompt", prompts)
    tokenizer = load_tokenizer(tiny_rm)
    full = tokenize_pairs(tokenizer, read_preferences(table).views, max_length=100_000)
    assert max(map(len, full.dataset["chosen_ids"])) > 200  # TRL's own filter would drop these at 48
    trained = train_reward_model(table, fast(tiny_rm, max_length=48, epochs=1.0))
    report = trained.report
    assert report["n_pairs"] == 8 and report["n_left_out"] == 0
    assert report["n_truncated_pairs"] == 4
    short = tokenize_pairs(tokenizer, read_preferences(table).views, max_length=48)
    for cut, whole in zip(short.dataset["chosen_ids"], full.dataset["chosen_ids"]):
        assert len(cut) <= 48 and cut == whole[-len(cut) :]  # the end of the response is kept


def test_extra_args_are_typed_by_transformers_parser(tiny_rm, tmp_path):
    extra = ["--warmup_steps", "0.25", "--lr_scheduler_type", "cosine", "--weight_decay", "0.01"]
    config = reward_config(tmp_path, extra, model=tiny_rm, max_length=64)
    assert config.warmup_steps == 0.25 and config.weight_decay == 0.01
    assert getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type) == "cosine"
    with pytest.raises(ValueError, match="not a valid"):
        reward_config(tmp_path, ["--no_such_field", "1"], model=tiny_rm)
    with pytest.raises(ValueError, match="--max-length"):
        reward_config(tmp_path, ["--max_length", "9"], model=tiny_rm, max_length=64)


def test_config_checks_legend_fields_once_and_is_trl_reward_config():
    from trl import RewardConfig

    config = LegendRewardConfig(margin_column="None", lora=True, lora_r=4)
    assert isinstance(config, RewardConfig) and config.margin_column is None and not config.offset_on
    assert config.learning_rate == 1e-4 and config.lora_alpha == 8  # LoRA defaults: 1e-4, 2 x r
    plain = LegendRewardConfig()
    assert plain.learning_rate == 2e-5 and plain.bf16 is False and plain.save_strategy == "no"
    assert plain.data_seed == plain.seed == 0 and plain.per_device_train_batch_size == 8
    for bad, message in (
        (dict(template="fancy"), "unknown template 'fancy'"),
        (dict(train_layers=-1), "train_layers must be at least 0"),
        (dict(alpha=float("nan")), "alpha must be a finite number"),
        (dict(max_length=1), "max_length must be at least 2"),
        (dict(lora_r=0), "lora_r must be at least 1"),
    ):
        with pytest.raises(ValueError, match=message):
            LegendRewardConfig(**bad)
    # The saved form is TRL's own to_dict, legend's fields included, JSON-able.
    saved = json.loads(json.dumps(LegendRewardConfig(alpha=0.5, prompt_column="q").to_report()))
    assert saved["alpha"] == 0.5 and saved["prompt_column"] == "q" and saved["num_train_epochs"] == 1.0


# ---------------------------------------------------------------- scoring and accuracy


def test_batched_scores_equal_one_by_one_forward(tiny_rm):
    scorer = load_reward_model(tiny_rm)
    prefs = read_preferences(toy_pairs(7))
    scores = score_pairs(scorer, prefs.views, batch_size=3)
    pairs = tokenize_pairs(scorer.tokenizer, prefs.views, max_length=scorer.max_length)
    expected = [_reward_alone(scorer.model, ids) for ids in pairs.dataset["chosen_ids"]]
    np.testing.assert_allclose(scores.chosen, expected, rtol=1e-4, atol=1e-5)
    assert scorer.tokenizer.pad_token != scorer.tokenizer.eos_token  # the reward is read at <|im_end|>


def test_pairwise_accuracy_and_bootstrap_ci_match_numpy():
    rng = np.random.default_rng(3)
    chosen, rejected = rng.normal(0.3, 1, 400), rng.normal(0, 1, 400)
    levels = rng.integers(0, 3, 400).astype(float)
    report = pairwise_accuracy(chosen, rejected, levels=levels, n_bootstrap=3000, seed=7)
    correct = (chosen > rejected).astype(float)
    assert report["accuracy"] == pytest.approx(correct.mean())
    # The documented procedure, written out: resample pairs with replacement, take percentiles.
    idx = np.random.default_rng(7).integers(0, 400, size=(3000, 400))
    expected = np.percentile(correct[idx].mean(axis=1), [2.5, 97.5])
    np.testing.assert_allclose(report["ci95"], expected)
    # ... and it agrees with the normal approximation p ± 1.96·sqrt(p(1-p)/n) to within a point.
    half = 1.96 * np.sqrt(correct.mean() * (1 - correct.mean()) / 400)
    np.testing.assert_allclose(report["ci95"], [correct.mean() - half, correct.mean() + half], atol=0.01)
    for value in (0, 1, 2):
        row = report["by_level"][str(value)]
        assert row["n"] == int((levels == value).sum())
        assert row["accuracy"] == pytest.approx(correct[levels == value].mean())


def test_ties_count_as_wrong():
    report = pairwise_accuracy(np.array([1.0, 2.0, 0.0, 5.0]), np.array([1.0, 1.0, 3.0, 4.0]))
    assert report["accuracy"] == 0.5 and report["ties"] == 1


# ---------------------------------------------------------------- RewardEnsemble@K and compare-rm


def test_kfold_partitions_every_pair_once():
    folds = kfold(11, 3, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(11))
    assert [len(f) for f in folds] in ([4, 4, 3], [4, 3, 4], [3, 4, 4])


def test_ensemble_margins_out_of_fold(tiny_rm, monkeypatch):
    from legend.rewards import ensemble as ensemble_module

    trained_models = []  # in fold order
    real_train = ensemble_module.train_reward_model

    def recording(prefs, settings):
        trained = real_train(prefs, settings)
        trained_models.append((len(prefs), trained))
        return trained

    monkeypatch.setattr(ensemble_module, "train_reward_model", recording)
    table, reward = toy_pairs(12), fast(tiny_rm, epochs=1.0)
    result = ensemble_margins(table, reward, EnsembleSettings(k=3, levels=3, seed=0))
    out = result.dataset
    # Each pair's raw margin is the reward gap of the member whose fold held it out (scored here one pair at
    # a time), and the levels are the hand-computed binning of those gaps.
    views = read_preferences(table).views
    raw_by_hand = np.full(len(views), np.nan)
    for (n_trained, trained), held_out in zip(trained_models, kfold(12, 3, seed=0)):
        assert n_trained == 12 - len(held_out)
        scorer = as_scorer(trained.model, trained.tokenizer, max_length=reward.max_length, template=reward.template)
        for i in held_out:
            raw_by_hand[i] = score_pairs(scorer, [views[i]], batch_size=1).gap[0]
    np.testing.assert_allclose(out["margin_ensemble_raw"], raw_by_hand, atol=1e-4)
    positive = raw_by_hand[raw_by_hand > 0]
    middle = np.quantile(positive, 0.5)
    expected = np.where(raw_by_hand <= 0, 0.0, np.where(raw_by_hand <= middle, 1.0, 2.0))
    np.testing.assert_array_equal(out["margin_ensemble"], expected)
    assert out.num_rows == 12 and {"margin_ensemble", "margin_ensemble_raw", "margin"} <= set(out.column_names)
    report = result.report
    assert [m["train_pairs"] for m in report["members"]] == [8, 8, 8]
    assert sum(m["scored_pairs"] for m in report["members"]) == 12  # each pair scored once, out of fold
    assert set(out["margin_ensemble"]) <= {0.0, 1.0, 2.0}
    raw = np.asarray(out["margin_ensemble_raw"])
    np.testing.assert_array_equal(out["margin_ensemble"], np.where(raw <= 0, 0.0, out["margin_ensemble"]))
    assert report["forward_backward_tokens"] > 0 and report["forward_only_tokens"] > 0
    assert report["seconds"] >= report["train_seconds"] > 0


def test_compare_rm_margin_model_wins_when_margin_is_informative(tiny_rm, tmp_path):
    """Half the training labels are flipped and carry margin 0; the clean half carries margin 3.

    Bradley–Terry sees a contradiction (optimum gap 0); with the margin the optimum gap is +1.5 in
    favour of the safe answer, so the margin-trained model must get the clean test set right.
    """
    train, test = toy_pairs(48, flipped=0.5, seed=1), toy_pairs(24, seed=2)
    data = tmp_path / "train.jsonl"
    write_table(train, data)
    write_json({"summary": {"seconds": 2.4, "rows": 48}}, tmp_path / "train.jsonl.legend.json")
    report = compare_reward_models(str(data), fast(tiny_rm, epochs=3.0), CompareSettings(ensemble_k=2), test=test)
    runs = {r["run"]: r for r in report["runs"]}
    assert set(runs) == {"bradley-terry", "legend", "ensemble"}
    assert runs["legend"]["accuracy"] >= runs["bradley-terry"]["accuracy"]
    assert runs["legend"]["accuracy"] >= 0.9
    assert runs["legend"]["ci95"][0] <= runs["legend"]["accuracy"] <= runs["legend"]["ci95"][1]
    assert report["n_train"] == 48 and report["n_test"] == 24
    cost = report["cost"]
    assert cost["legend"]["seconds_for_train_pairs"] == pytest.approx(2.4)
    assert cost["ratio_ensemble_over_legend"] == pytest.approx(cost["ensemble"]["seconds"] / 2.4)


def test_lora_model_is_merged_and_scores_the_same_after_reload(tiny_rm, tmp_path):
    trained = train_reward_model(toy_pairs(8), fast(tiny_rm, lora=True, lora_r=4, epochs=1.0), out=tmp_path / "rm")
    before = score_pairs(
        as_scorer(trained.model, trained.tokenizer, max_length=64), read_preferences(toy_pairs(5)).views
    )
    after = score_pairs(load_reward_model(tmp_path / "rm"), read_preferences(toy_pairs(5)).views)
    np.testing.assert_allclose(after.chosen, before.chosen, rtol=1e-4, atol=1e-5)
    saved = json.loads((tmp_path / "rm" / "legend_rm.json").read_text())
    assert saved["settings"]["lora"] is True and saved["n_pairs"] == 8


# ---------------------------------------------------------------- CLI


def test_cli_train_eval_compare(tiny_rm, tmp_path):
    from typer.testing import CliRunner

    from legend.cli import app

    runner = CliRunner()
    data, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_table(toy_pairs(16, flipped=0.25), data)
    write_table(toy_pairs(8, seed=5), test)
    common = ["--model", tiny_rm, "--max-length", "64", "--learning-rate", "0.005", "--quiet"]
    result = runner.invoke(
        app,
        [
            "train-rm",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "rm"),
            "--alpha",
            "0.5",
            "--eval-data",
            str(test),
            "--arg",
            "warmup_steps=0.1",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trained on 16 pairs" in result.output
    report = json.loads((tmp_path / "rm" / "legend_rm.json").read_text())
    # legend_rm.json's "settings" is the whole LegendRewardConfig: the pass-through value is in it, typed.
    assert report["alpha"] == 0.5 and report["settings"]["warmup_steps"] == 0.1
    result = runner.invoke(
        app,
        [
            "eval-rm",
            "--model",
            str(tmp_path / "rm"),
            "--data",
            str(test),
            "--out",
            str(tmp_path / "eval.json"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["n"] == 8 and "3" in evaluation["by_level"]
    result = runner.invoke(
        app, ["compare-rm", "--data", str(data), "--test", str(test), "--out", str(tmp_path / "cmp.json"), *common]
    )
    assert result.exit_code == 0, result.output
    assert "bradley-terry" in result.output and "legend" in result.output
    result = runner.invoke(
        app, ["ensemble-margins", "--data", str(data), "--out", str(tmp_path / "ens.jsonl"), "--k", "2", *common]
    )
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "ens.jsonl.ensemble.json").read_text())
    assert sidecar["summary"]["k"] == 2 and sidecar["summary"]["rows"] == 16
    result = runner.invoke(
        app, ["train-rm", "--data", str(data), "--out", str(tmp_path / "x"), "--margin-column", "nope", *common]
    )
    assert result.exit_code == 2 and "no column 'nope'" in result.output


def test_train_layers_freezes_everything_below_the_top_blocks(tiny_rm):
    from transformers import AutoModelForSequenceClassification

    before = AutoModelForSequenceClassification.from_pretrained(tiny_rm, num_labels=1).state_dict()
    trained = train_reward_model(toy_pairs(8), fast(tiny_rm, margin_column=None, train_layers=1, epochs=1.0))
    after = trained.model.state_dict()
    assert trained.report["trainable_parameters"] < sum(t.numel() for t in before.values())
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"):
        torch.testing.assert_close(after[name], before[name])
    for name in ("model.layers.1.mlp.up_proj.weight", "score.weight"):
        assert not torch.equal(after[name], before[name])
    with pytest.raises(ValueError, match="either LoRA or --train-layers"):
        train_reward_model(toy_pairs(4), fast(tiny_rm, lora=True, train_layers=1))


# ---------------------------------------------------------------- the cached-trunk head (benchmarks/bench_rewards.py)


def test_cached_head_reads_the_reward_where_the_sequence_classification_model_does(tmp_path, tiny_tokenizer):
    """x̂ from one `encode` pass + (final-norm gain, score weight) = the TRL path's reward model, pair by pair."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from legend.encoding import EncodeConfig
    from legend.models import load_model
    from legend.rewards.cached import CachedRewardHead, final_norm_weight, head_features

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=1,
    )
    rm = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a non-trivial final-norm gain, so dividing it out is checked
        rm.model.norm.weight.copy_(torch.rand(32) + 0.5)
    rm.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    prefs = read_preferences(toy_pairs(6, flipped=0.5))
    expected = score_pairs(load_reward_model(str(tmp_path)), prefs.views, batch_size=4)  # eval-rm's path, padded

    lm = load_model(str(tmp_path))  # the same checkpoint as a causal LM (what `legend annotate` loads)
    torch.testing.assert_close(final_norm_weight(lm), rm.model.norm.weight.detach())
    items = [(v.prompt, v.chosen) for v in prefs.views] + [(v.prompt, v.rejected) for v in prefs.views]
    feats = head_features(lm, items, EncodeConfig(max_length=64, layers=(1,), poolings=("mean",)))
    assert (1, "mean") in feats.encoded.vectors  # the margin layers ride along in the same pass
    head = CachedRewardHead(final_norm_weight(lm), 0.02, torch.Generator().manual_seed(0))
    with torch.no_grad():
        head.weight.copy_(rm.score.weight[0])
        rewards = head(feats.normalized).double().numpy()
    np.testing.assert_allclose(rewards[:6], expected.chosen, atol=1e-4)
    np.testing.assert_allclose(rewards[6:], expected.rejected, atol=1e-4)


def _separable(n: int, seed: int, hidden: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    axis = np.eye(hidden)[0]
    chosen = rng.normal(size=(n, hidden)) + axis  # overlapping: plain BT converges to a finite gap
    rejected = rng.normal(size=(n, hidden)) - axis
    return torch.tensor(chosen, dtype=torch.float32), torch.tensor(rejected, dtype=torch.float32)


def test_cached_head_first_loss_is_the_hand_computed_margin_loss():
    from legend.rewards.cached import CachedHeadSettings, CachedRewardHead, train_cached_head

    chosen, rejected = _separable(12, seed=0)
    gain = torch.rand(16) + 0.5
    margins = np.linspace(0.0, 3.0, 12)
    settings = CachedHeadSettings(batch_size=12, epochs=1, init_std=0.5, seed=3)
    trained = train_cached_head(chosen, rejected, gain, margins, settings)
    start = CachedRewardHead(gain, 0.5, torch.Generator().manual_seed(3))  # the head before its one step
    w, g = start.weight.detach().double().numpy(), gain.double().numpy()
    gap = (chosen.double().numpy() * g) @ w - (rejected.double().numpy() * g) @ w
    assert trained.steps == 1 and len(trained.losses) == 1
    assert trained.losses[0] == pytest.approx(float(np.mean(-_logsigmoid(gap - margins))), rel=1e-5)
    assert not np.allclose(trained.gain, gain.double().numpy())  # the gain is trained, as --train-layers 0 does


def test_cached_head_training_equals_torch_adamw_with_autograd():
    """The hand-written gradients and AdamW update = autograd on TRL's loss + torch.optim.AdamW + linear decay."""
    from legend.rewards.cached import CachedHeadSettings, CachedRewardHead, pair_loss, train_cached_head

    chosen, rejected = _separable(20, seed=4)
    gain = torch.rand(16) + 0.5
    margins = np.random.default_rng(0).uniform(0, 2, size=20)
    settings = CachedHeadSettings(learning_rate=0.05, epochs=2, batch_size=6, weight_decay=0.1, seed=5)
    trained = train_cached_head(chosen, rejected, gain, margins, settings)

    generator = torch.Generator().manual_seed(5)
    head = CachedRewardHead(gain, settings.init_std, generator).double()
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.05, weight_decay=0.1)
    total = 2 * 4  # 2 epochs of ceil(20 / 6) steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    offset = torch.tensor(margins)
    losses = []
    for _ in range(2):
        order = torch.randperm(20, generator=generator)
        for begin in range(0, 20, 6):
            rows = order[begin : begin + 6]
            loss = pair_loss(head(chosen[rows].double()), head(rejected[rows].double()), offset[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
    assert trained.steps == total
    np.testing.assert_allclose(trained.losses, losses, rtol=1e-9)
    np.testing.assert_allclose(trained.weight, head.weight.detach().numpy(), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(trained.gain, head.gain.detach().numpy(), rtol=1e-7, atol=1e-10)


def test_cached_head_learns_and_margins_widen_the_gap():
    from legend.rewards.cached import CachedHeadSettings, train_cached_head

    chosen, rejected = _separable(200, seed=1)
    test_c, test_r = _separable(200, seed=2)
    gain = torch.ones(16)
    settings = CachedHeadSettings(learning_rate=5e-2, epochs=5)
    plain = train_cached_head(chosen, rejected, gain, None, settings)
    wide = train_cached_head(chosen, rejected, gain, np.full(200, 4.0), settings)
    gap_plain = plain.score(test_c) - plain.score(test_r)
    gap_wide = wide.score(test_c) - wide.score(test_r)
    assert (gap_plain > 0).mean() > 0.85  # held-out pairs; the Bayes rate is Φ(√2) ≈ 0.92
    assert gap_wide.mean() > gap_plain.mean() + 2.0  # -log σ(gap − m) asks for gap > m
    with pytest.raises(ValueError, match="12 finite"):
        train_cached_head(chosen[:12], rejected[:12], gain, [np.nan] * 12, settings)
    with pytest.raises(ValueError, match="shapes differ"):
        train_cached_head(chosen, rejected[:5], gain)
    with pytest.raises(ValueError, match="at least 1"):
        CachedHeadSettings(epochs=0)


def test_a_reward_model_without_legends_record_is_read_at_trls_default_length(tiny_rm):
    """Issue 16: the two scorers disagreed (1024 in best-of-n, 512 in evaluate-rm). The one scorer keeps
    TRL's RewardConfig default, the length such a model is most likely trained with."""
    import dataclasses

    from trl import RewardConfig

    from legend.align.scoring import RewardModelScorer
    from legend.rewards import load_reward_model

    trl_default = next(f.default for f in dataclasses.fields(RewardConfig) if f.name == "max_length")
    scorer = load_reward_model(tiny_rm)
    assert scorer.max_length == trl_default == 1024
    assert RewardModelScorer is type(scorer)  # best-of-n's scorer is the same class, so the same length
