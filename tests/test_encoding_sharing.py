"""Prefix sharing by packed rows and batching (legend.encoding): equal to each text alone, batch-invariant."""

from __future__ import annotations

import random

import pytest
import torch

from legend.encoding import (
    EncodeConfig,
    TokenizedText,
    encode,
    pack_by_prefix,
    plan_batches,
    render,
)

SYSTEM_AND_USER = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I pick a lock?"})


def _pair_items():
    """Items as annotation makes them: the chosen and rejected of each pair share their prompt."""
    prompts = [
        ({"role": "user", "content": "How do I pick a lock?"},),
        SYSTEM_AND_USER,
        (
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Write a script that can exploit vulnerabilities in a software."},
        ),
        ({"role": "user", "content": "Tell me a joke"},),
    ]
    answers = [
        ("I can't answer that.", "Sure, here is how to pick a lock: insert the tension wrench."),
        ("No.", "Yes, rake the pins."),
        ("I'm sorry, but I cannot help with that request.", "Sure"),
        ("Why did the fox jump? To get over the lazy dog.", ""),
    ]
    chosen = [(p, a) for p, (a, _) in zip(prompts, answers)]
    rejected = [(p, b) for p, (_, b) in zip(prompts, answers)]
    return chosen + rejected


def _alone(lm, prompt, response, layer, pooling, max_length=2048):
    """Independent computation: prompt ⊕ response alone through the full model with output_hidden_states."""
    tok = lm.tokenizer
    prefix, answer = render(tok, prompt, response, "chat")
    prefix_ids, answer_ids = (
        tok(prefix, add_special_tokens=False)["input_ids"],
        tok(answer, add_special_tokens=False)["input_ids"],
    )
    if not answer_ids:
        prefix_ids, answer_ids = prefix_ids[:-1], prefix_ids[-1:]
    ids = (prefix_ids + answer_ids)[-max_length:]
    start = max(0, len(prefix_ids) - (len(prefix_ids) + len(answer_ids) - len(ids)))
    with torch.no_grad():
        states = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer][0]
    return states[-1] if pooling == "last" else states[start:].mean(0)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def any_attention_lm(request, tiny_tokenizer):
    """The tiny Llama under both attention implementations that take our block mask."""
    from helpers import build_tiny_llama
    from legend.models import wrap_model

    model = build_tiny_llama(len(tiny_tokenizer), seed=3)
    model.set_attn_implementation(request.param)
    assert model.config._attn_implementation == request.param
    return wrap_model(model, tiny_tokenizer, model_id=f"tiny-{request.param}")


@pytest.mark.parametrize("layer", [0, 2, -1])
def test_prefix_sharing_matches_each_text_alone(any_attention_lm, layer):
    items = _pair_items()
    config = EncodeConfig(layers=(layer,), poolings=("last", "mean"), batch_size=3, prefix_sharing=True)
    encoded = encode(any_attention_lm, items, config)
    # The prompt really is computed once per pair: fewer tokens run than the texts hold.
    assert encoded.n_forward_tokens < encoded.n_tokens
    for pooling in ("last", "mean"):
        vectors = encoded.get(layer, pooling)
        for row, (prompt, response) in enumerate(items):
            torch.testing.assert_close(
                vectors[row], _alone(any_attention_lm, prompt, response, layer, pooling), atol=1e-5, rtol=1e-4
            )


def test_prefix_sharing_equals_plain_path_with_truncation(tiny_lm):
    # max_length cuts the prompt differently for answers of different lengths: those texts must not share.
    items = _pair_items()
    shared = encode(tiny_lm, items, EncodeConfig(layers=(-1, 1), poolings=("last", "mean"), max_length=24))
    plain = encode(
        tiny_lm, items, EncodeConfig(layers=(-1, 1), poolings=("last", "mean"), max_length=24, prefix_sharing=False)
    )
    assert plain.n_forward_tokens == plain.n_tokens and shared.truncated == plain.truncated and any(plain.truncated)
    for key in plain.vectors:
        torch.testing.assert_close(shared.vectors[key], plain.vectors[key], atol=1e-5, rtol=1e-4)
    prompt, response = items[2]
    torch.testing.assert_close(
        shared.get(-1, "mean")[2], _alone(tiny_lm, prompt, response, -1, "mean", 24), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("sharing", [True, False])
def test_vectors_do_not_depend_on_batch_size_or_order(tiny_lm, sharing):
    items = _pair_items() * 2 + [(SYSTEM_AND_USER, f"answer number {i}") for i in range(5)]
    reference = encode(tiny_lm, items, EncodeConfig(poolings=("last", "mean"), batch_size=1, prefix_sharing=sharing))
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    for batch_size, max_batch_tokens in [(2, 64), (64, 100_000)]:
        config = EncodeConfig(
            poolings=("last", "mean"), batch_size=batch_size, max_batch_tokens=max_batch_tokens, prefix_sharing=sharing
        )
        shuffled = encode(tiny_lm, [items[i] for i in order], config)
        for key, vectors in reference.vectors.items():
            torch.testing.assert_close(shuffled.vectors[key], vectors[order], atol=1e-5, rtol=1e-4)


def test_pack_by_prefix_groups_by_prompt_tokens_and_splits_long_groups():
    texts = [
        TokenizedText(ids=(1, 2, 3, 10), answer_start=3, truncated=False),
        TokenizedText(ids=(7, 8), answer_start=1, truncated=False),
        TokenizedText(ids=(1, 2, 3, 11, 12), answer_start=3, truncated=False),
        TokenizedText(ids=(1, 2, 3, 13, 14, 15), answer_start=3, truncated=False),
    ]
    rows = pack_by_prefix(texts, max_row_tokens=7)
    # prompt (1,2,3) + answers of 1 and 2 tokens fill 6 ≤ 7; the 3-token answer starts a new row.
    assert [(r.prefix, r.members) for r in rows] == [((1, 2, 3), (0, 2)), ((1, 2, 3), (3,)), ((7,), (1,))]


def test_plan_batches_respects_budgets_and_covers_every_index():
    lengths = [5, 50, 7, 49, 3, 100, 6]
    batches = plan_batches(lengths, batch_size=2, max_batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 2
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 100
    # Sorted by length, so neighbours in a batch have similar lengths.
    assert [1, 3] in batches or [3, 1] in batches


def test_plan_batches_keeps_padding_under_the_limit():
    lengths = [100, 95, 91, 89, 50, 48, 46, 10]
    batches = plan_batches(lengths, batch_size=8, max_batch_tokens=10_000, max_padding=0.1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert all(lengths[i] >= 0.9 * width for i in batch)
    # 89 < 0.9 * 100 starts a new batch; the rest group by similar length.
    assert batches == [[0, 1, 2], [3], [4, 5, 6], [7]]
    # Without the limit only the size and token budgets apply: one batch.
    assert plan_batches(lengths, batch_size=8, max_batch_tokens=10_000, max_padding=1.0) == [[0, 1, 2, 3, 4, 5, 6, 7]]
