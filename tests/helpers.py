"""Test helpers shared by several test files: a tiny random Llama and tokenizer (no downloads), sample rows."""

from __future__ import annotations

import json
import random

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


def build_tiny_llama(vocab_size: int, layers: int = 4, hidden: int = 32, seed: int = 0):
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


def hh_pair_items(n: int):
    """The first `n` bundled hh-rlhf pairs as (views, items): every (prompt, chosen), then every (prompt, rejected)."""
    from legend.data import detect_layout, load_table, pair_views
    from legend.resources import HH_RLHF_SAMPLE, sample_path

    table = load_table(sample_path(HH_RLHF_SAMPLE)).select(range(n))
    views = pair_views(table, detect_layout(table))
    return views, [(v.prompt, v.chosen) for v in views] + [(v.prompt, v.rejected) for v in views]


def hh_rows(n, seed=0, pad=0):
    rng = random.Random(seed)
    words = ["lock", "bomb", "cake", "fox", "dog", "script", "joke", "help", "sorry", "sure"]
    rows = []
    for i in range(n):
        prompt = (
            f"\n\nHuman: tell me about {rng.choice(words)} {i} "
            + "x" * pad
            + f"\n\nAssistant: ok\n\nHuman: and {rng.choice(words)}?"
        )
        rows.append(
            {
                "id": i,
                "chosen": prompt + f"\n\nAssistant: I can't help with {rng.choice(words)}.",
                "rejected": prompt + f"\n\nAssistant: Sure, {rng.choice(words)} {rng.choice(words)}.",
            }
        )
    rows[3]["rejected"] = rows[3]["chosen"]  # an identical pair: margin exactly 0
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def put_in_hub_cache(cache, repo_id: str, folder, commit: str, ref: str | None = "main"):
    """Lay `folder`'s files out in a Hugging Face cache as huggingface_hub does: blobs/<hash>,
    snapshots/<commit>/<file> -> ../../blobs/<hash>, refs/<ref> holding the commit. Returns the repo folder."""
    import hashlib
    import os
    from pathlib import Path

    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(Path(folder).iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo
