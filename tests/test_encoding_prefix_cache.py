"""Prefix sharing through a KV cache: each distinct prompt encoded once, each answer continued from it.

Every vector is checked against the text run alone through the full model with
output_hidden_states (an independent computation) and against the plain path (prefix_sharing=False).
"""

from __future__ import annotations

import random

import pytest
import torch

from helpers import hh_pair_items
from legend.encoding import EncodeConfig, encode, resolve_layer, sharing, sharing_routes, tokenize_items

LOCK = ({"role": "user", "content": "How do I pick a lock?"},)
HI = ({"role": "user", "content": "Hi"},)
LONG = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Write a script that can exploit vulnerabilities in a software."},
)


def _items():
    """Prompts of three lengths with 1, 2 and 5 answers, one answer empty."""
    return (
        [(LOCK, "I can't answer that.")]
        + [(HI, "Hello there, friend."), (HI, "")]
        + [
            (LONG, "No."),
            (LONG, "Sure, here is a script that scans ports."),
            (LONG, "I'm sorry, I can't."),
            (LONG, "The quick brown fox jumps over the lazy dog. " * 3),
            (LONG, "Yes"),
        ]
    )


def _alone(lm, text, layer, pooling):
    """The tokenised text run alone through the whole model with output_hidden_states, then pooled by hand."""
    with torch.no_grad():
        states = lm.model(input_ids=torch.tensor([text.ids]), output_hidden_states=True).hidden_states[layer][0]
    return states[-1] if pooling == "last" else states[text.answer_start :].mean(0)


def _max_diff(a, b):
    return max(float((a.vectors[key] - b.vectors[key]).abs().max()) for key in b.vectors)


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny matrices gain nothing from threads, and on a busy machine two OpenMP threads make each
    tiny forward ~100x slower (measured: 3.4 s against 0.03 s for this file's items)."""
    if request.node.get_closest_marker("e2e"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def attention_lm(request, tiny_tokenizer):
    from helpers import build_tiny_llama
    from legend.models import wrap_model

    model = build_tiny_llama(len(tiny_tokenizer), seed=5)
    model.set_attn_implementation(request.param)
    return wrap_model(model, tiny_tokenizer, model_id=f"tiny-{request.param}")


@pytest.mark.parametrize("layers", [(-1,), (2,), (1, -1)], ids=["last-after-norm", "middle", "both"])
def test_cache_path_equals_each_text_alone_and_the_plain_path(attention_lm, layers):
    items = _items()
    # max_padding=1: the three prompts (14, 19 and 63 tokens) run in one left-padded batch.
    common = dict(layers=layers, poolings=("last", "mean"), batch_size=3, max_batch_tokens=400, max_padding=1.0)
    config = EncodeConfig(**common, sharing_method="cache")
    texts = tokenize_items(attention_lm.tokenizer, items, config)
    plain_rows, packed_rows, groups = sharing_routes(
        attention_lm, texts, config, max(resolve_layer(layer, 4) for layer in layers)
    )
    # Every text really goes through the cache, in three groups of 1, 2 and 5 answers.
    assert plain_rows == packed_rows == [] and sorted(len(members) for _, members in groups) == [1, 2, 5]
    cached = encode(attention_lm, items, config)
    plain = encode(attention_lm, items, EncodeConfig(**common, prefix_sharing=False))
    assert _max_diff(cached, plain) < 1e-4
    for layer in layers:
        for pooling in ("last", "mean"):
            for row, text in enumerate(texts):
                expected = _alone(attention_lm, text, layer, pooling)
                assert float((cached.get(layer, pooling)[row] - expected).abs().max()) < 1e-4, (layer, pooling, row)


def test_an_empty_answer_reads_the_last_prompt_token(tiny_lm):
    # Plain template: an empty response has no tokens, so its text ends with the prompt's last token.
    items = [(HI, ""), (HI, "Hello there, friend."), (HI, "No."), (LOCK, "")]
    config = EncodeConfig(layers=(-1, 2), poolings=("last", "mean"), template="plain", sharing_method="cache")
    texts = tokenize_items(tiny_lm.tokenizer, items, config)
    assert len(texts[0].ids) - texts[0].answer_start == 1 and texts[0].answer_start > 0
    assert sharing_routes(tiny_lm, texts, config, 4)[:2] == ([], [])
    cached = encode(tiny_lm, items, config)
    for layer in (-1, 2):
        for pooling in ("last", "mean"):
            for row, text in enumerate(texts):
                expected = _alone(tiny_lm, text, layer, pooling)
                assert float((cached.get(layer, pooling)[row] - expected).abs().max()) < 1e-4


def test_forward_tokens_count_each_prompt_once_without_padding(tiny_lm):
    items = _items()
    config = EncodeConfig(poolings=("last", "mean"), sharing_method="cache")
    texts = tokenize_items(tiny_lm.tokenizer, items, config)
    prompts = {text.ids[: text.answer_start] for text in texts}
    expected = sum(map(len, prompts)) + sum(len(t.ids) - t.answer_start for t in texts)
    encoded = encode(tiny_lm, items, config)
    assert encoded.n_forward_tokens == expected < encoded.n_tokens == sum(len(t.ids) for t in texts)
    # Duplicates are encoded once and the count survives restoring them.
    assert encode(tiny_lm, items + items[:2], config).n_forward_tokens == expected


def test_truncated_prompts_fall_back_or_share_what_is_left(tiny_lm):
    # max_length cuts prompts from the left: long answers lose the whole prompt (answer_start 0).
    items = _items()
    common = dict(layers=(-1, 2), poolings=("last", "mean"), max_length=20)
    config = EncodeConfig(**common, sharing_method="cache")
    texts = tokenize_items(tiny_lm.tokenizer, items, config)
    assert any(t.truncated and t.answer_start == 0 for t in texts)
    assert any(t.truncated and t.answer_start > 0 for t in texts)
    plain_rows, _, groups = sharing_routes(tiny_lm, texts, config, 4)
    cached_members = {i for _, members in groups for i in members}
    assert {i for i, t in enumerate(texts) if t.answer_start == 0} <= set(plain_rows)
    assert cached_members and all(texts[i].answer_start > 0 for i in cached_members)
    cached = encode(tiny_lm, items, config)
    plain = encode(tiny_lm, items, EncodeConfig(**common, prefix_sharing=False))
    assert cached.truncated == plain.truncated
    assert _max_diff(cached, plain) < 1e-4
    for row, text in enumerate(texts):
        assert float((cached.get(-1, "mean")[row] - _alone(tiny_lm, text, -1, "mean")).abs().max()) < 1e-4


@pytest.mark.parametrize("method", ["cache", "packed", "auto", "off"])
def test_vectors_do_not_depend_on_batch_size_or_order(tiny_lm, method):
    items = _items() * 2 + [(LONG, f"answer number {i}") for i in range(5)]
    options = dict(prefix_sharing=False) if method == "off" else dict(sharing_method=method)
    reference = encode(tiny_lm, items, EncodeConfig(poolings=("last", "mean"), batch_size=1, **options))
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    for batch_size, max_batch_tokens in [(2, 64), (64, 100_000)]:
        config = EncodeConfig(
            poolings=("last", "mean"), batch_size=batch_size, max_batch_tokens=max_batch_tokens, **options
        )
        shuffled = encode(tiny_lm, [items[i] for i in order], config)
        for key, vectors in reference.vectors.items():
            torch.testing.assert_close(shuffled.vectors[key], vectors[order], atol=1e-5, rtol=1e-4)


def _route_sizes(lm, config, deepest=4):
    texts = tokenize_items(lm.tokenizer, _items(), config)
    plain, packed, groups = sharing_routes(lm, texts, config, deepest)
    return len(plain), len(packed), sorted(len(members) for _, members in groups)


def test_auto_packs_short_rows_and_caches_long_ones(tiny_lm, monkeypatch):
    auto = EncodeConfig()
    texts = tokenize_items(tiny_lm.tokenizer, _items(), auto)
    long_row = sum(len(t.ids) for t in texts[3:]) - 4 * texts[3].answer_start  # the prompt once, 5 answers
    assert long_row > 2 * sum(len(t.ids) for t in texts[:3])
    # sdpa takes the block mask: short rows are packed ...
    assert _route_sizes(tiny_lm, auto) == (0, 8, [])
    # ... and a row longer than the limit (prompt + its 5 answers) goes through the cache.
    monkeypatch.setattr(sharing, "PACKED_MAX_ROW_TOKENS", long_row - 1)
    assert _route_sizes(tiny_lm, auto) == (0, 3, [5])
    monkeypatch.setattr(sharing, "PACKED_MAX_ROW_TOKENS", long_row)
    assert _route_sizes(tiny_lm, auto) == (0, 8, [])
    assert _route_sizes(tiny_lm, EncodeConfig(sharing_method="packed")) == (0, 8, [])
    assert _route_sizes(tiny_lm, EncodeConfig(prefix_sharing=False)) == (8, 0, [])
    # Only the embeddings are read: they do not depend on the prompt, so nothing is cached.
    assert _route_sizes(tiny_lm, EncodeConfig(layers=(0,), sharing_method="cache"), deepest=0) == (0, 8, [])
    # An attention without our 4D mask (flash/flex): sharing goes through the cache; a lone answer runs plain.
    monkeypatch.setattr(sharing, "supports_packed_rows", lambda lm: False)
    assert _route_sizes(tiny_lm, auto) == (1, 0, [2, 5])
    assert _route_sizes(tiny_lm, EncodeConfig(sharing_method="packed")) == (1, 0, [2, 5])
    assert _route_sizes(tiny_lm, EncodeConfig(layers=(0,)), deepest=0) == (8, 0, [])
    encoded = encode(tiny_lm, _items(), EncodeConfig(poolings=("last", "mean")))
    plain = encode(tiny_lm, _items(), EncodeConfig(poolings=("last", "mean"), prefix_sharing=False))
    assert encoded.n_forward_tokens < plain.n_forward_tokens and _max_diff(encoded, plain) < 1e-4


def test_unknown_sharing_method_is_refused():
    with pytest.raises(ValueError, match="sharing_method"):
        EncodeConfig(sharing_method="kv")


@pytest.mark.e2e
def test_cache_path_matches_the_plain_path_on_the_embedded_model():
    from legend.models import load_model

    lm = load_model("default")
    views, items = hh_pair_items(12)
    # One prompt scored against many answers, as best-of-n does.
    items += [(views[0].prompt, v.chosen) for v in views[1:5]]
    common = dict(layers=(-1, 15), poolings=("last", "mean"))  # after the final norm, and a middle layer
    cached = encode(lm, items, EncodeConfig(**common, sharing_method="cache"))
    plain = encode(lm, items, EncodeConfig(**common, prefix_sharing=False))
    assert cached.n_forward_tokens < 0.8 * plain.n_forward_tokens
    assert _max_diff(cached, plain) < 1e-3
    assert min(float(v.abs().max()) for v in plain.vectors.values()) > 0.1  # the states are not trivially small
