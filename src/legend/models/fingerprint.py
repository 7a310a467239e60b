"""A model's fingerprint: a short hash of its architecture and weights, the same in any dtype or placement."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import ModelError
from .placement import accelerate_hooks

_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "quantization_config",
    "_model_name_or_path",
    "architectures",
    "use_cache",
    "output_hidden_states",
}


def fingerprint(model: Any, samples: int = 4096) -> str:
    """A short hash of the model's architecture and a strided sample of every weight tensor.

    Values are rounded to bfloat16 before hashing, so the same weights loaded in fp32 or bf16 agree,
    and only a few thousand numbers per tensor are read, so it stays cheap for 70B models. Weights
    that accelerate offloaded (meta tensors of a dispatched model) are read one tensor at a time from
    its offload store (the checkpoint's safetensors files or the offload folder), so a dispatched
    load has the same fingerprint as a plain one and nothing is materialised on a GPU.

    Args:
        model: a transformers model (anything with ``config.to_dict()`` and ``state_dict()``).
        samples: numbers read per tensor.

    Returns:
        "sha256:" and 16 hex digits.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> _ = torch.manual_seed(0)
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    >>> fingerprint(model) == fingerprint(model.to(torch.bfloat16))
    True
    """
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "model_type"):
        digest.update(f"{key}={config.get(key)};".encode())
    with torch.no_grad():
        for name, tensor in sorted(_weights(model)):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            sample = flat[::step][:samples].to(device="cpu", dtype=torch.bfloat16).view(torch.int16)
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(sample.numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def _weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the state dict; offloaded (meta) tensors are fetched lazily from accelerate's store."""
    state = model.state_dict()
    offloaded: dict[str, tuple[Any, str]] = {}
    if any(tensor.device.type == "meta" for tensor in state.values()):
        for module_name, module in model.named_modules():
            for hook in accelerate_hooks(module):
                store = getattr(hook, "weights_map", None)
                if getattr(hook, "offload", False) and store is not None:
                    local = [n for n, _ in module.named_parameters(recurse=False)]
                    local += [n for n, _ in module.named_buffers(recurse=False)]
                    for local_name in local:
                        offloaded[f"{module_name}.{local_name}" if module_name else local_name] = (store, local_name)
    aliases: dict[int, list[str]] = {}  # tied weights (lm_head = embed_tokens) are one tensor under several names
    for name, tensor in state.items():
        aliases.setdefault(id(tensor), []).append(name)
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            tensor = _offloaded_copy(name, aliases[id(tensor)], offloaded)
        yield name, tensor


def _offloaded_copy(name: str, aliases: list[str], offloaded: dict[str, tuple[Any, str]]) -> torch.Tensor:
    """An offloaded weight read from accelerate's store, under its own name or a tied alias (saved once)."""
    for candidate in [name] + [alias for alias in aliases if alias != name]:
        if candidate in offloaded:
            store, local_name = offloaded[candidate]
            try:
                return store[local_name]
            except KeyError:
                continue
    raise ModelError(f"weight {name} is on the meta device and accelerate holds no offloaded copy of it")


def tokenizer_fingerprint(tokenizer: Any, template: str = "chat") -> dict[str, str]:
    """What decides the token ids of a text, hashed: the tokenizer (vocabulary, merges, normaliser, pre-tokeniser,
    post-processor with its BOS/EOS rule, added tokens, the special tokens a template writes) and, for the chat
    template, the template itself.

    The pad token is left out: legend masks padding, and the pad policy (`ensure_pad_token`) may set it.

    Args:
        tokenizer: a transformers tokenizer.
        template: "chat" or "plain" (what the texts are rendered with; "auto": chat when it has one).

    Returns:
        {"template": "chat"|"plain", "tokens": "sha256:…", "chat_template": "sha256:…"} (no chat_template entry for
        the plain template, which does not use it).

    >>> from legend.testing import build_tokenizer
    >>> tok = build_tokenizer()
    >>> before = tokenizer_fingerprint(tok)
    >>> tok.chat_template = tok.chat_template.replace("assistant", "bot")
    >>> [k for k in before if before[k] != tokenizer_fingerprint(tok)[k]]
    ['chat_template']
    >>> tokenizer_fingerprint(tok, "plain")["tokens"] == before["tokens"]
    True
    """
    import json

    chat = getattr(tokenizer, "chat_template", None)
    kind = "chat" if template == "chat" or (template == "auto" and chat) else "plain"
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        document = json.loads(backend.to_str())
        for volatile in ("truncation", "padding"):  # set and reset by each call with padding/truncation
            document.pop(volatile, None)
        digest.update(json.dumps(document, sort_keys=True).encode())
    else:
        digest.update(type(tokenizer).__name__.encode())
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        digest.update(json.dumps(sorted((int(k), str(v)) for k, v in added.items())).encode())
    special = {
        name: str(getattr(tokenizer, name, None))
        for name in ("bos_token", "eos_token", "unk_token", "add_bos_token", "add_eos_token")
    }
    digest.update(json.dumps(special, sort_keys=True).encode())
    parts = {"template": kind, "tokens": "sha256:" + digest.hexdigest()[:16]}
    if kind == "chat":
        text = json.dumps(chat, sort_keys=True)
        parts["chat_template"] = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return parts
