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
    pairs = induce_pairs(tiny_lm, QUESTIONS, refusals=("No.", "I won't."))
    assert [p.harmless for p in pairs] == ["No.", "I won't.", "No."]
    assert [p.harmful_refused for p in pairs] == [False, True, False]
    with pytest.raises(ValueError, match="refusal template"):
        induce_pairs(tiny_lm, QUESTIONS, refusals=())
