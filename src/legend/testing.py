"""A tiny randomly initialised Llama with a small byte-level tokenizer: no download, built in about a second.

For examples, doctests and users' own tests of code built on legend (margins from a random model mean
nothing; the shapes, the plumbing and the invariants are what such a model can check).

>>> lm = tiny_model()
>>> lm.num_layers, lm.hidden_size, lm.model_id
(4, 32, 'tiny-random-llama')
"""

from __future__ import annotations

from typing import Any

import torch

from .models import LoadedModel, wrap_model

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


def build_tokenizer(chat: bool = True) -> Any:
    """A 400-token byte-level BPE tokenizer trained on a few sentences (with a ChatML template when `chat`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(vocab_size: int, layers: int = 4, hidden: int = 32, seed: int = 0) -> Any:
    """A randomly initialised LlamaForCausalLM (4 layers of 32 by default, seeded), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def tiny_model(layers: int = 4, hidden: int = 32, seed: int = 0, chat: bool = True) -> LoadedModel:
    """A LoadedModel around `build_tiny_llama` and `build_tokenizer`.

    Args:
        layers: decoder blocks.
        hidden: hidden size (a multiple of 4).
        seed: the weights' seed.
        chat: give the tokenizer a chat template.

    Returns:
        A LoadedModel named "tiny-random-llama".

    >>> tiny_model(layers=2, hidden=16).hidden_size
    16
    """
    tokenizer = build_tokenizer(chat)
    return wrap_model(build_tiny_llama(len(tokenizer), layers, hidden, seed), tokenizer, model_id="tiny-random-llama")
