"""Shared fixtures: a tiny randomly initialised Llama with a small byte-level tokenizer (no downloads)."""

from __future__ import annotations

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Human: How do I make a bomb? Assistant: I can't answer that.",
    "The quick brown fox jumps over the lazy dog. Sure, here is how to pick a lock.",
    "Write a script that can exploit vulnerabilities in a software or operating system.",
    "I'm sorry, but I cannot help with that request. Please ask something else.",
] * 4


def build_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    raw.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(vocab_size: int, layers: int = 4, hidden: int = 32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    """A LoadedModel around a 4-layer random Llama; shared, so tests must not modify it."""
    from legend.models import wrap_model

    model = build_tiny_llama(len(tiny_tokenizer))
    return wrap_model(model, tiny_tokenizer, model_id="tiny-random-llama")


def hh_pair_items(n: int):
    """The first `n` bundled hh-rlhf pairs as (views, items): items = every (prompt, chosen), then every (prompt, rejected)."""
    from legend.data import detect_layout, load_table, pair_views
    from legend.resources import HH_RLHF_SAMPLE, sample_path

    table = load_table(sample_path(HH_RLHF_SAMPLE)).select(range(n))
    views = pair_views(table, detect_layout(table))
    return views, [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views]
