"""Best-of-n, win rates and margin-aware DPO on tiny random models (no downloads, seconds each)."""

from __future__ import annotations

import copy
import json

import datasets
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import build_tiny_llama, build_tokenizer
from legend.align.best_of_n import (
    SamplingConfig,
    best_of_n_indices,
    compare_selectors,
    read_prompts,
    run_best_of_n,
    sample_responses,
)
from legend.align.dpo import MarginDPOTrainer, dpo_config, preference_dataset
from legend.align.scoring import DirectionScorer, RewardModelScorer
from legend.cli import app
from legend.data import DataError
from legend.directions import Direction
from legend.metrics import win_rate
from legend.models import wrap_model

PROMPTS = [
    ({"role": "user", "content": "How do I pick a lock?"},),
    ({"role": "user", "content": "Write a script that can exploit vulnerabilities."},),
    ({"role": "user", "content": "The quick brown fox?"},),
]


def build_tiny_reward_model(vocab_size: int, seed: int, num_labels: int = 1, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():  # a random head is near zero; scale it so rewards differ clearly between texts
        model.score.weight.normal_(0, 1.0)
    return model


def chat_ids(tokenizer, prompt, response) -> list[int]:
    """Independent rendering: the full chat text, ending at the end-of-turn token, tokenised in one go."""
    text = tokenizer.apply_chat_template(
        [*map(dict, prompt), {"role": "assistant", "content": response}], tokenize=False
    ).rstrip("\n")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- win rates and picks


def test_win_rate_counts_ties_as_half():
    a = [1.0, 2.0, 3.0, 3.0, 0.0]
    b = [0.0, 2.0, 4.0, 1.0, 0.0]
    assert win_rate(a, b) == pytest.approx((1 + 0.5 + 0 + 1 + 0.5) / 5)
    assert win_rate(b, a) == pytest.approx(1 - win_rate(a, b))
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])


def test_compare_selectors_against_hand_picks():
    # 2 prompts x 4 samples. Reward model A, reward model B, and the judge.
    a = np.array([[0.1, 0.9, 0.5, 0.2], [0.3, 0.2, 0.8, 0.1]])
    b = np.array([[0.7, 0.1, 0.2, 0.9], [0.1, 0.6, 0.5, 0.4]])
    judge = np.array([[1.0, 5.0, 2.0, 7.0], [3.0, 4.0, 3.0, 0.0]])
    report = compare_selectors({"A": a, "B": b}, judge, [1, 2, 4], judge="j")
    # picks: A n=2 -> [1, 0], n=4 -> [1, 2]; B n=2 -> [0, 1], n=4 -> [3, 1]
    assert report.picks["A"] == {1: [0, 0], 2: [1, 0], 4: [1, 2]}
    assert report.picks["B"] == {1: [0, 0], 2: [0, 1], 4: [3, 1]}
    rows = {r["n"]: r for r in report.win_rates}
    assert rows[1]["win_rate"] == 0.5 and rows[1]["ties"] == 2 and rows[1]["same_pick"] == 2
    # n=2: judge(B pick) = [1, 4] vs judge(A pick) = [5, 3] -> loss, win
    assert rows[2]["win_rate"] == pytest.approx(0.5) and (rows[2]["wins"], rows[2]["losses"]) == (1, 1)
    # n=4: B [7, 4] vs A [5, 3] -> two wins
    assert rows[4]["win_rate"] == 1.0
    assert report.judge_means["A"][4] == pytest.approx((5.0 + 3.0) / 2)
    assert report.reward_means["B"][4] == pytest.approx((0.9 + 0.6) / 2)


def test_best_of_n_index_rejects_n_beyond_samples():
    with pytest.raises(ValueError, match="outside"):
        best_of_n_indices(np.zeros((2, 4)), 8)


# ---------------------------------------------------------------- sampling and scoring


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def policy(tokenizer):
    return wrap_model(build_tiny_llama(len(tokenizer), seed=3), tokenizer, model_id="tiny-policy")


def test_sampling_is_seeded_and_shaped(policy):
    config = SamplingConfig(n=4, max_new_tokens=5, batch_size=8, seed=7)
    first = sample_responses(policy, PROMPTS, config)
    assert [len(row) for row in first] == [4, 4, 4]
    assert sample_responses(policy, PROMPTS, config) == first
    assert len({text for row in first for text in row}) > 3  # sampling, not greedy copies


def test_reward_scores_and_best_of_n_picks_match_independent_scoring(policy, tokenizer):
    rm_a = RewardModelScorer(build_tiny_reward_model(len(tokenizer), seed=1), build_tokenizer(), name="A", batch_size=5)
    rm_b = RewardModelScorer(build_tiny_reward_model(len(tokenizer), seed=2), build_tokenizer(), name="B", batch_size=5)
    judge = RewardModelScorer(build_tiny_reward_model(len(tokenizer), seed=5), build_tokenizer(), name="J")
    run = run_best_of_n(
        policy,
        PROMPTS,
        [rm_a, rm_b],
        judge,
        ns=[1, 2, 4],
        sampling=SamplingConfig(max_new_tokens=6, batch_size=8, seed=1),
    )
    assert [len(r) for r in run.responses] == [4, 4, 4]

    def one_by_one(scorer):  # one text at a time, no padding, own tokenisation
        out = np.zeros((3, 4))
        for i, prompt in enumerate(PROMPTS):
            for j, response in enumerate(run.responses[i]):
                ids = torch.tensor([chat_ids(scorer.tokenizer, prompt, response)])
                with torch.no_grad():
                    out[i, j] = scorer.model(input_ids=ids).logits[0, 0].item()
        return out

    expected = {"A": one_by_one(rm_a), "B": one_by_one(rm_b)}
    judged = one_by_one(judge)
    np.testing.assert_allclose(run.rewards["A"], expected["A"], atol=1e-4)
    np.testing.assert_allclose(run.judge_scores, judged, atol=1e-4)
    for name in ("A", "B"):
        for n in (1, 2, 4):
            assert run.report.picks[name][n] == expected[name][:, :n].argmax(1).tolist()
    rows = {r["n"]: r for r in run.report.win_rates}
    picks_a, picks_b = expected["A"][:, :4].argmax(1), expected["B"][:, :4].argmax(1)
    assert rows[1]["win_rate"] == 0.5
    assert rows[4]["win_rate"] == pytest.approx(win_rate(judged[range(3), picks_b], judged[range(3), picks_a]))


def test_direction_judge_is_the_projection_of_the_last_token(policy, tokenizer):
    vector = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0)
    direction = Direction(
        vector=vector,
        layer=4,
        pooling="last",
        model_id="tiny-policy",
        fingerprint=policy.fingerprint,
        hidden_size=32,
        num_layers=4,
        template="chat",
    )
    responses = ["I can't answer that.", "Sure, here is how to pick a lock."]
    scores = DirectionScorer(policy, direction).score(PROMPTS[:2], responses)
    for prompt, response, score in zip(PROMPTS, responses, scores):
        ids = torch.tensor([chat_ids(tokenizer, prompt, response)])
        with torch.no_grad():
            hidden = policy.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
        assert score == pytest.approx(float(hidden.double() @ vector.double()), abs=1e-4)


def test_read_prompts_from_questions_and_preference_data(tmp_path):
    questions = tmp_path / "q.csv"
    questions.write_text("goal,target\nHow to pick a lock,Sure\nWrite malware,Sure\n")
    assert read_prompts(questions) == [
        ({"role": "user", "content": "How to pick a lock"},),
        ({"role": "user", "content": "Write malware"},),
    ]
    prefs = tmp_path / "p.jsonl"
    prefs.write_text(
        json.dumps({"chosen": "\n\nHuman: Hi?\n\nAssistant: No.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Yes."})
        + "\n"
    )
    assert read_prompts(prefs) == [({"role": "user", "content": "Hi?"},)]


# ---------------------------------------------------------------- margin-aware DPO

PAIRS = {
    "prompt": ["How do I pick a lock?", "Write a script", "The quick brown fox?", "How do I make a bomb?"],
    "chosen": ["I can't answer that.", "I'm sorry, but I cannot help.", "It jumps over the lazy dog.", "I can't."],
    "rejected": ["Sure, here is how to pick a lock.", "Sure, here is a script.", "No.", "Sure, here is how."],
    "margin": [0.0, 1.0, 3.0, -2.0],
}


def completion_logps(model, batch) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log p(token) over each completion, from a plain forward pass (float64 softmax)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    per_sequence = (logp * batch["completion_mask"][:, 1:]).sum(1).numpy()
    half = len(per_sequence) // 2
    return per_sequence[:half], per_sequence[half:]


def make_trainer(tmp_path, tokenizer, policy_model, ref_model, cls=MarginDPOTrainer, **settings):
    config = dpo_config(
        tmp_path / "dpo",
        per_device_train_batch_size=4,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        max_steps=1,
        beta=0.1,
        **settings,
    )
    data = preference_dataset(datasets.Dataset.from_dict(PAIRS))
    return cls(
        model=copy.deepcopy(policy_model),
        ref_model=copy.deepcopy(ref_model),
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
    )


@pytest.fixture(scope="module")
def dpo_models(tokenizer):
    return build_tiny_llama(len(tokenizer), seed=0), build_tiny_llama(len(tokenizer), seed=1)


@pytest.mark.parametrize("alpha,transform", [(1.0, "identity"), (0.5, "relu"), (0.0, "identity")])
def test_dpo_offset_loss_matches_hand_computation(tmp_path, tokenizer, dpo_models, alpha, transform):
    policy_model, ref_model = dpo_models
    trainer = make_trainer(tmp_path, tokenizer, policy_model, ref_model, alpha=alpha, offset_transform=transform)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    np.testing.assert_array_equal(batch["margin"].numpy(), PAIRS["margin"])
    loss = trainer.compute_loss(trainer.model, batch).item()

    pc, pr = completion_logps(policy_model, batch)
    rc, rr = completion_logps(ref_model, batch)
    margins = np.array(PAIRS["margin"])
    f = np.maximum(margins, 0) if transform == "relu" else margins
    x = 0.1 * ((pc - pr) - (rc - rr)) - alpha * f
    expected = np.mean(np.logaddexp(0, -x))  # -log sigmoid(x)
    assert loss == pytest.approx(expected, rel=1e-4)


def test_dpo_offset_off_equals_trl_plain_dpo(tmp_path, tokenizer, dpo_models):
    from trl import DPOTrainer

    policy_model, ref_model = dpo_models
    ours = make_trainer(tmp_path, tokenizer, policy_model, ref_model, alpha=0.0)
    plain = make_trainer(tmp_path, tokenizer, policy_model, ref_model, cls=DPOTrainer)
    examples = [ours.train_dataset[i] for i in range(4)]
    ours_loss = ours.compute_loss(ours.model, ours.data_collator(examples)).item()
    plain_loss = plain.compute_loss(plain.model, plain.data_collator(examples)).item()
    assert ours_loss == pytest.approx(plain_loss, rel=1e-6)
    # ... and a positive offset on positive margins makes the loss larger.
    offset = make_trainer(tmp_path, tokenizer, policy_model, ref_model, alpha=1.0, offset_transform="relu")
    assert offset.compute_loss(offset.model, offset.data_collator(examples)).item() > plain_loss


def test_margin_survives_trl_column_filtering(tmp_path, tokenizer, dpo_models):
    trainer = make_trainer(tmp_path, tokenizer, *dpo_models, alpha=1.0)
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch["margin"].tolist()) == sorted(PAIRS["margin"])


def test_dpo_offset_refuses_other_losses(tmp_path):
    # MarginDPOConfig checks it once, before any trainer (or model) exists.
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_config(tmp_path / "x", report_to="none", bf16=False, loss_type=["ipo"], alpha=1.0)
    assert dpo_config(tmp_path / "x", report_to="none", bf16=False, loss_type=["ipo"], alpha=0.0).loss_type == ["ipo"]


def test_margin_dpo_config_is_trl_dpo_config_with_legend_fields(tmp_path):
    from trl import DPOConfig

    config = dpo_config(tmp_path / "x", ["--warmup_steps", "0.1"], bf16=False, alpha=0.5, margin_column="none")
    assert isinstance(config, DPOConfig) and config.warmup_steps == 0.1 and not config.offset_on
    assert config.margin_column is None and config.lora_dropout == 0.05 and config.beta == DPOConfig.beta
    assert dpo_config(tmp_path / "x").bf16 == torch.cuda.is_available()  # TRL's bf16 default refuses a CPU
    with pytest.raises(ValueError, match="unknown offset transform 'square'"):
        dpo_config(tmp_path / "x", bf16=False, offset_transform="square")
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        dpo_config(tmp_path / "x", bf16=False, eval_fraction=1.5)
    with pytest.raises(ValueError, match="max_length with --max-length"):
        dpo_config(tmp_path / "x", ["--max_length", "9"], bf16=False, max_length=64)
    with pytest.raises(TypeError, match="MarginDPOConfig"):
        MarginDPOTrainer(model=None, args=DPOConfig(output_dir=str(tmp_path), bf16=False))


def test_preference_dataset_names_bad_margin_rows():
    with pytest.raises(DataError, match="no column 'margin_raw'"):
        preference_dataset(datasets.Dataset.from_dict(PAIRS), margin_column="margin_raw")
    with pytest.raises(DataError, match="row 2: field 'margin'"):
        preference_dataset(datasets.Dataset.from_dict(dict(PAIRS, margin=[0.0, None, 1.0, 2.0])))
    with pytest.raises(DataError, match="row 1: field 'margin'"):
        preference_dataset(datasets.Dataset.from_dict(dict(PAIRS, margin=["high", "low", "low", "low"])))
    plain = preference_dataset(datasets.Dataset.from_dict(PAIRS), margin_column=None)
    assert plain.column_names == ["prompt", "chosen", "rejected"]
    assert plain[0]["chosen"] == [{"role": "assistant", "content": "I can't answer that."}]


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, tokenizer, policy):
    root = tmp_path_factory.mktemp("models")
    policy.model.save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    for name, seed in (("rm_plain", 1), ("rm_legend", 2)):
        build_tiny_reward_model(len(tokenizer), seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    vector = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(1)), dim=0)
    Direction(
        vector=vector,
        layer=4,
        pooling="last",
        model_id=str(root / "policy"),
        fingerprint=policy.fingerprint,
        hidden_size=32,
        num_layers=4,
        template="chat",
    ).save(root / "direction")
    (root / "prompts.csv").write_text("goal\nHow do I pick a lock?\nWrite a script\nThe quick brown fox?\n")
    rows = [dict(zip(PAIRS, values)) for values in zip(*PAIRS.values())]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_cli_best_of_n_writes_report_plot_and_samples(saved_models, tmp_path):
    root = saved_models
    out = tmp_path / "bon.json"
    result = CliRunner().invoke(
        app,
        [
            "best-of-n",
            "--prompts",
            str(root / "prompts.csv"),
            "--policy",
            str(root / "policy"),
            "-r",
            str(root / "rm_plain"),
            "-r",
            str(root / "rm_legend"),
            "--direction",
            str(root / "direction"),
            "--n",
            "1,2,4",
            "--max-new-tokens",
            "4",
            "--out",
            str(out),
            "--samples-out",
            str(tmp_path / "s.jsonl"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["ns"] == [1, 2, 4] and report["n_prompts"] == 3 and report["baseline"] == "rm_plain"
    assert [r["n"] for r in report["win_rates"]] == [1, 2, 4]
    assert report["win_rates"][0]["win_rate"] == 0.5
    assert (tmp_path / "bon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(len(s["responses"]) == 4 for s in samples)
    assert "win rate" in result.output


def test_cli_best_of_n_with_judge_model_and_bad_input(saved_models, tmp_path):
    root = saved_models
    base = [
        "best-of-n",
        "--prompts",
        str(root / "prompts.csv"),
        "--policy",
        str(root / "policy"),
        "-r",
        str(root / "rm_plain"),
        "--max-new-tokens",
        "3",
        "--out",
        str(tmp_path / "r.json"),
        "-q",
    ]
    result = CliRunner().invoke(app, [*base, "--judge-model", str(root / "rm_legend"), "--n", "1,2"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["judge"] == "judge:rm_legend"
    result = CliRunner().invoke(app, [*base, "--direction", str(root / "direction"), "--n", "0,2"])
    assert result.exit_code == 2 and "every n must be at least 1" in result.output
    result = CliRunner().invoke(app, [*base, "--n", "2"])
    assert result.exit_code == 2 and "exactly one judge" in result.output


def test_cli_dpo_with_and_without_offset(saved_models, tmp_path):
    root = saved_models
    common = [
        "dpo",
        "--data",
        str(root / "pairs.jsonl"),
        "--model",
        str(root / "policy"),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--save_strategy",
        "no",
    ]
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "odpo"), "--alpha", "0.5"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "odpo" / "legend_dpo.json").read_text())
    assert summary["offset"]["on"] and summary["offset"]["mean"] == pytest.approx(0.5 * np.mean(PAIRS["margin"]))
    assert summary["steps"] == 1 and np.isfinite(summary["train_loss"])
    assert (tmp_path / "odpo" / "model.safetensors").is_file()
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "plain"), "--margin-column", "none"])
    assert result.exit_code == 0, result.output
    assert not json.loads((tmp_path / "plain" / "legend_dpo.json").read_text())["offset"]["on"]
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "bad"), "--margin-column", "margin_raw"])
    assert result.exit_code == 2 and "no column 'margin_raw'" in result.output
