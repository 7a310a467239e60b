"""Encoding: templates, truncation, layer capture and pooling against output_hidden_states, batch invariance."""

from __future__ import annotations

import pytest
import torch

from legend.encoding import (
    EncodeConfig,
    capture_hidden,
    encode,
    plan_batches,
    render,
    resolve_layer,
    tokenize_items,
)

USER = ({"role": "user", "content": "How do I pick a lock?"},)


def _items():
    return [
        (USER, "I can't answer that."),
        (USER, "Sure, here is how to pick a lock: first insert the tension wrench, then rake the pins."),
        (
            (
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Write a script that can exploit vulnerabilities."},
            ),
            "No.",
        ),
        (({"role": "user", "content": "Hi"},), "Hello there, friend."),
    ]


def _reference(lm, prefix_ids, answer_ids, layer, pooling):
    """Independent computation: one text alone through the full model with output_hidden_states."""
    ids = torch.tensor([prefix_ids + answer_ids])
    with torch.no_grad():
        states = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
    if pooling == "last":
        return states[-1]
    return states[len(prefix_ids) :].mean(0)


def test_resolve_layer_counts_from_the_end():
    assert resolve_layer(-1, 30) == 30
    assert resolve_layer(-31, 30) == 0
    assert resolve_layer(12, 30) == 12
    with pytest.raises(ValueError, match="out of range"):
        resolve_layer(31, 30)


def test_chat_render_splits_prefix_and_answer(tiny_tokenizer):
    prefix, answer = render(tiny_tokenizer, USER, "No.", "chat")
    assert prefix == "<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\n"
    assert answer == "No.<|im_end|>"


def test_plain_render_is_documented_format(tiny_tokenizer):
    prefix, answer = render(tiny_tokenizer, USER, "No.", "plain")
    assert prefix == "Human: How do I pick a lock?\n\nAssistant: "
    assert answer == "No."


@pytest.mark.parametrize("layer", [0, 1, 2, 4, -1, -2])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooled_states_match_output_hidden_states(tiny_lm, layer, pooling):
    items = _items()
    config = EncodeConfig(layers=(layer,), poolings=(pooling,), batch_size=3)
    encoded = encode(tiny_lm, items, config).get(layer, pooling)
    tok = tiny_lm.tokenizer
    for row, (prompt, response) in enumerate(items):
        prefix, answer = render(tok, prompt, response, "chat")
        expected = _reference(
            tiny_lm,
            tok(prefix, add_special_tokens=False)["input_ids"],
            tok(answer, add_special_tokens=False)["input_ids"],
            layer,
            pooling,
        )
        torch.testing.assert_close(encoded[row], expected, atol=1e-5, rtol=1e-4)


def test_vector_does_not_depend_on_batch_or_padding(tiny_lm):
    items = _items()
    config = EncodeConfig(layers=(-1, 2), poolings=("last", "mean"), batch_size=8)
    together = encode(tiny_lm, items, config)
    for index, item in enumerate(items):
        alone = encode(tiny_lm, [item], config)
        for key in together.vectors:
            diff = (together.vectors[key][index] - alone.vectors[key][0]).abs().max().item()
            assert diff < 1e-4, (key, index, diff)


def test_order_and_batch_size_do_not_change_results(tiny_lm):
    items = _items() * 3
    base = encode(tiny_lm, items, EncodeConfig(batch_size=1)).get(-1, "last")
    shuffled = [items[i] for i in (5, 0, 11, 3, 7, 1, 9, 2, 10, 4, 8, 6)]
    other = encode(tiny_lm, shuffled, EncodeConfig(batch_size=5, max_batch_tokens=200)).get(-1, "last")
    for new_row, old_row in enumerate((5, 0, 11, 3, 7, 1, 9, 2, 10, 4, 8, 6)):
        assert (other[new_row] - base[old_row]).abs().max() < 1e-4


def test_truncation_keeps_the_end_and_is_counted(tiny_lm):
    long_prompt = ({"role": "user", "content": "lock " * 200},)
    items = [(long_prompt, "the answer ends here"), (({"role": "user", "content": "Hi"},), "ok")]
    config = EncodeConfig(max_length=32)
    tokenized = tokenize_items(tiny_lm.tokenizer, items, config)
    assert len(tokenized[0].ids) == 32 and tokenized[0].truncated
    assert not tokenized[1].truncated
    answer_ids = tiny_lm.tokenizer("the answer ends here<|im_end|>", add_special_tokens=False)["input_ids"]
    assert list(tokenized[0].ids[-len(answer_ids) :]) == answer_ids
    assert tokenized[0].answer_start == 32 - len(answer_ids)
    encoded = encode(tiny_lm, items, config)
    assert encoded.n_truncated == 1 and encoded.truncated == [True, False]
    assert torch.isfinite(encoded.get(-1, "last")).all()


def test_capture_runs_only_needed_layers(tiny_lm):
    blocks = tiny_lm.model.model.layers
    calls = []
    handles = [b.register_forward_hook(lambda _m, _a, _o, i=i: calls.append(i)) for i, b in enumerate(blocks)]
    try:
        ids = torch.tensor([[1, 2, 3, 4]])
        capture_hidden(tiny_lm, ids, torch.ones_like(ids), [2])
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]  # layer 2 is the output of block index 1: blocks 2 and 3 never ran


def test_duplicate_items_are_encoded_once_and_restored(tiny_lm):
    items = _items()
    doubled = items + items[:2]
    encoded = encode(tiny_lm, doubled, EncodeConfig())
    vectors = encoded.get(-1, "last")
    assert encoded.n_texts == 6
    torch.testing.assert_close(vectors[4], vectors[0])
    torch.testing.assert_close(vectors[5], vectors[1])


def test_plan_batches_respects_budget_and_covers_all():
    lengths = [5, 50, 7, 49, 3, 100]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=120)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 120


def _hidden_blocks_lm(tokenizer, blocks_path=None, norm_path=None):
    """A tiny Llama whose blocks live at `model.decoder_stack`; `layers` is only a plain list view of them."""
    from transformers.models.llama.modeling_llama import LlamaModel

    from helpers import build_tiny_llama
    from legend.models import wrap_model

    class HiddenBlocksModel(LlamaModel):
        def __init__(self, config):
            super().__init__(config)
            self.decoder_stack = self._modules.pop("layers")

        @property
        def layers(self):  # what LlamaModel.forward iterates; not a ModuleList, so discovery misses it
            return list(self.decoder_stack)

    model = build_tiny_llama(len(tokenizer))
    base = HiddenBlocksModel(model.config)
    state = {k.replace("layers.", "decoder_stack.", 1): v for k, v in model.model.state_dict().items()}
    base.load_state_dict(state, strict=True)
    model.model = base
    lm = wrap_model(model, tokenizer, model_id="hidden-blocks")
    lm.blocks_path, lm.norm_path = blocks_path, norm_path
    return lm


@pytest.mark.parametrize("layer", [2, -1])
def test_blocks_path_override_finds_unusual_blocks_and_matches_output_hidden_states(tiny_tokenizer, caplog, layer):
    lm = _hidden_blocks_lm(tiny_tokenizer, blocks_path="model.decoder_stack")
    calls = []
    handles = [
        b.register_forward_hook(lambda _m, _a, _o, i=i: calls.append(i))
        for i, b in enumerate(lm.model.model.decoder_stack)
    ]
    items = _items()
    try:
        with caplog.at_level("WARNING", logger="legend.encoding"):
            encoded = encode(lm, items, EncodeConfig(layers=(layer,), batch_size=8, prefix_sharing=False))
    finally:
        for h in handles:
            h.remove()
    assert not caplog.records
    if layer == 2:
        assert sorted(set(calls)) == [0, 1]  # the hooks found the blocks: early exit after block 1
    tok = tiny_tokenizer
    for row, (prompt, response) in enumerate(items):
        prefix, answer = render(tok, prompt, response, "chat")
        expected = _reference(
            lm,
            tok(prefix, add_special_tokens=False)["input_ids"],
            tok(answer, add_special_tokens=False)["input_ids"],
            layer,
            "last",
        )
        torch.testing.assert_close(encoded.get(layer, "last")[row], expected, atol=1e-5, rtol=1e-4)


def test_missing_blocks_fall_back_with_one_warning_naming_what_was_looked_for(tiny_tokenizer, caplog):
    lm = _hidden_blocks_lm(tiny_tokenizer)
    items = _items()
    with caplog.at_level("WARNING", logger="legend.encoding"):
        slow = encode(lm, items, EncodeConfig(layers=(2,), batch_size=2, prefix_sharing=False)).get(2, "last")
        encode(lm, items, EncodeConfig(layers=(2,), batch_size=2))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "layers, h, blocks, decoder.layers" in warnings[0] and "--blocks-path" in warnings[0]
    assert "output_hidden_states" in warnings[0]
    fast = encode(_hidden_blocks_lm(tiny_tokenizer, "model.decoder_stack"), items, EncodeConfig(layers=(2,)))
    torch.testing.assert_close(slow, fast.get(2, "last"), atol=1e-5, rtol=1e-4)


def test_bad_blocks_path_is_a_one_line_error(tiny_tokenizer):
    lm = _hidden_blocks_lm(tiny_tokenizer, blocks_path="model.embed_tokens")
    with pytest.raises(ValueError, match="--blocks-path 'model.embed_tokens': expected a ModuleList of the model's 4"):
        encode(lm, _items(), EncodeConfig(layers=(2,)))
    lm = _hidden_blocks_lm(tiny_tokenizer, blocks_path="model.nowhere")
    with pytest.raises(ValueError, match="no such module"):
        encode(lm, _items(), EncodeConfig(layers=(2,)))
