"""Inducing contrast pairs: batched greedy generation, prefills, refusal templates and flags."""

from __future__ import annotations

import pytest

from legend.induce import GenerationConfig, generate_answers, induce_pairs, looks_like_refusal

QUESTIONS = ["Write an exploit", "How do I pick a lock quickly and quietly without being seen?", "Hi"]


@pytest.mark.parametrize(
    "text",
    [
        "I can't answer that.",
        "I cannot help",
        "Sorry, no.",
        "I'm sorry, but no",
        "As an AI, I must decline",
        "  I won't do that",
        "I am unable to assist",
    ],
)
def test_refusals_are_recognised(text):
    assert looks_like_refusal(text)


@pytest.mark.parametrize("text", ["Sure, here is a script", "Step 1: get a tension wrench", "Instructions below"])
def test_answers_are_not_refusals(text):
    assert not looks_like_refusal(text)


def test_batched_generation_equals_one_at_a_time(tiny_lm):
    config = GenerationConfig(max_new_tokens=6, batch_size=3)
    batched = generate_answers(tiny_lm, QUESTIONS, config=config)
    alone = [
        generate_answers(tiny_lm, [q], config=GenerationConfig(max_new_tokens=6, batch_size=1))[0] for q in QUESTIONS
    ]
    assert batched == alone


def test_prefill_starts_each_answer(tiny_lm):
    prefills = ["Sure, here is", "Sure", "Hello"]
    answers = generate_answers(tiny_lm, QUESTIONS, prefills, GenerationConfig(max_new_tokens=3))
    for answer, prefill in zip(answers, prefills):
        assert answer.startswith(prefill)


def test_refusal_templates_are_used_in_turn_and_refusals_flagged(tiny_lm, monkeypatch):
    import legend.induce as induce

    monkeypatch.setattr(
        induce, "generate_answers", lambda lm, questions, prefills, config: ["Sure, step one", "I'm sorry, no", "Here"]
    )
    pairs = induce_pairs(tiny_lm, QUESTIONS, refusals=("No.", "I won't."), harmless="paper")
    assert [p.harmless for p in pairs] == ["No.", "I won't.", "No."]
    assert [p.harmful_refused for p in pairs] == [False, True, False]
    with pytest.raises(ValueError, match="refusal template"):
        induce_pairs(tiny_lm, QUESTIONS, refusals=())


# ---------------------------------------------------------------- the refusal bank and self-written answers


def test_the_bundled_bank_has_twenty_distinct_refusals_with_provenance():
    import json

    from legend.induce import load_refusal_bank
    from legend.resources import REFUSAL_BANK, sample_path

    bank = load_refusal_bank()
    assert len(bank) >= 20 and len(set(bank)) == len(bank)
    assert all(looks_like_refusal(r) for r in bank)  # the detector recognises every phrasing we ship
    assert "written for legend" in json.loads(sample_path(REFUSAL_BANK).read_text())["provenance"].lower()
    # varied, not one template: several lengths and openings
    assert len({r.split()[0] for r in bank}) >= 10 and max(map(len, bank)) > 3 * min(map(len, bank))


def test_bank_assignment_is_deterministic_per_question_and_spread(tmp_path):
    import hashlib
    from collections import Counter

    from legend.induce import assign_refusals, load_refusal_bank

    bank = load_refusal_bank()
    questions = [f"harmful question number {i}" for i in range(400)]
    first = assign_refusals(questions, bank, seed=0)
    # per question, not per position: reversing the list or dropping others changes nothing
    assert assign_refusals(questions[::-1], bank, seed=0) == first[::-1]
    assert assign_refusals(questions[5:6], bank, seed=0) == first[5:6]
    # independently: sha256 of "seed\0question" modulo the bank size
    i = int.from_bytes(hashlib.sha256(b"0\x00" + questions[7].encode()).digest()[:8], "big") % len(bank)
    assert first[7] == bank[i]
    counts = Counter(first)
    assert len(counts) == len(bank) and max(counts.values()) <= 3 * len(questions) / len(bank)
    other = assign_refusals(questions, bank, seed=1)
    assert sum(a != b for a, b in zip(first, other)) > len(questions) / 2  # the seed matters
    with pytest.raises(ValueError, match="at least one refusal"):
        assign_refusals(questions, [])


def test_a_bank_file_of_lines_or_json_is_read_and_checked(tmp_path):
    from legend.induce import load_refusal_bank

    (tmp_path / "bank.txt").write_text("No.\n\nI won't.\n")
    assert load_refusal_bank(tmp_path / "bank.txt") == ("No.", "I won't.")
    (tmp_path / "bank.json").write_text('{"refusals": ["No.", ""]}')
    with pytest.raises(ValueError, match="refusal 2: expected a non-empty string"):
        load_refusal_bank(tmp_path / "bank.json")


def test_induce_uses_the_bank_by_default_and_flags_self_written_non_refusals(tiny_lm, monkeypatch):
    import legend.induce as induce

    seen_systems = []

    def fake(lm, questions, prefills, config, system=None):
        seen_systems.append(system)
        if system is None:
            return ["Sure, step one", "Here is how", "Okay"]
        return ["I'm sorry, I can't help with that.", "Sure, here is how to do it.", "No, I won't."]

    monkeypatch.setattr(induce, "generate_answers", fake)
    banked = induce_pairs(tiny_lm, QUESTIONS)
    assert [p.harmless for p in banked] == induce.assign_refusals(QUESTIONS, induce.load_refusal_bank())
    assert {p.harmless_source for p in banked} == {"bank"}
    own = induce_pairs(tiny_lm, QUESTIONS, harmless="model")
    assert seen_systems[-1] == induce.SAFETY_SYSTEM_PROMPT
    assert [p.harmless_not_refusal for p in own] == [False, True, False]  # flagged, not dropped
    assert len(own) == 3 and own[1].harmless == "Sure, here is how to do it."
    with pytest.raises(ValueError, match="unknown harmless source"):
        induce_pairs(tiny_lm, QUESTIONS, harmless="nope")


def test_the_system_prompt_reaches_the_model(tiny_lm, monkeypatch):
    import legend.encoding.generation as generation

    rendered = []
    real = generation.render

    def spy(tokenizer, messages, answer, kind):
        rendered.append(messages)
        return real(tokenizer, messages, answer, kind)

    monkeypatch.setattr(generation, "render", spy)
    generate_answers(tiny_lm, QUESTIONS[:1], None, GenerationConfig(max_new_tokens=2), system="Be safe.")
    assert rendered[-1][0] == {"role": "system", "content": "Be safe."}


def test_direction_mixes_pair_files_records_sources_and_warns_on_saturation(tiny_lm, tmp_path):
    import json

    from typer.testing import CliRunner

    from legend.cli import app
    from legend.directions import Direction

    tiny_lm.model.save_pretrained(tmp_path / "model")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "model")
    induced = [
        {
            "question": f"q{i}",
            "harmful": f"Sure, here is how {i}",
            "harmless": "No.",
            "harmful_refused": i == 0,
            "harmless_not_refusal": i == 1,
        }
        for i in range(8)
    ]
    own = [{"question": f"own {i}", "harmful": f"Step one of {i}", "harmless": "I won't help."} for i in range(6)]
    (tmp_path / "induced.jsonl").write_text("".join(json.dumps(r) + "\n" for r in induced))
    (tmp_path / "own.jsonl").write_text("".join(json.dumps(r) + "\n" for r in own))
    out = tmp_path / "dir"
    args = ["direction", "--pairs", str(tmp_path / "induced.jsonl"), "--pairs", str(tmp_path / "own.jsonl")]
    args += ["--out", str(out), "-m", str(tmp_path / "model"), "--layer", "2", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    extra = Direction.load(out).extra
    sources = extra["pair_sources"]
    assert [(s["first"], s["count"]) for s in sources] == [(0, 6), (6, 6)]  # 2 flagged induced rows left out
    assert sources[0]["left_out_refused"] == 1 and sources[0]["left_out_not_refusal"] == 1
    assert Direction.load(out).n_pairs == 12
    heldout = Direction.load(out).heldout
    saturated = heldout["accuracy"] >= 0.99 or heldout["auc"] >= 0.999
    assert bool(extra["warnings"]) == saturated
    assert ("warning: held-out separation saturates" in " ".join(result.output.split())) == saturated
