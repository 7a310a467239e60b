"""Prefix sharing: texts with the same prompt run the prompt once (packed rows, or a prompt KV cache)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..models import LoadedModel
from .batching import plan_batches, supports_packed_rows
from .capture import capture_hidden, model_blocks
from .config import PACKED_MAX_ROW_TOKENS, EncodeConfig, TokenizedText
from .pooling import Span, pool_spans


def sharing_routes(
    lm: LoadedModel,
    texts: Sequence[TokenizedText],
    config: EncodeConfig,
    deepest: int,
) -> tuple[list[int], list[int], list[tuple[tuple[int, ...], list[int]]]]:
    """Split texts by how they run: plain rows, packed rows, or (prompt, answers) groups for the cache.

    Decided per prompt (the prompt tokens after truncation). "auto" packs when the attention takes
    our 4D block mask and the row (prompt + all its answers) has at most PACKED_MAX_ROW_TOKENS
    tokens: one forward, no copies of keys/values. A longer row (many or long answers, as in
    best-of-n scoring) pays attention and a mask that grow with the square of its length, while
    from the cache each answer costs only its own length × (prompt + itself); and with flash/flex
    attention (no custom 4D mask) the cache is the only way to share. A method the model cannot
    run falls back to the other one, then to plain rows (so does a lone answer, which shares
    nothing). Texts whose prompt was truncated away stay plain (packed, as before, where possible).
    """
    if not config.prefix_sharing:
        return list(range(len(texts))), [], []
    packed_ok = supports_packed_rows(lm.model)
    cache_ok = deepest > 0 and supports_prompt_cache(lm, deepest)  # layer 0 does not depend on the prompt
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, text in enumerate(texts):
        groups.setdefault(text.ids[: text.answer_start], []).append(index)
    plain: list[int] = []
    packed: list[int] = []
    cached: list[tuple[tuple[int, ...], list[int]]] = []
    for prefix, members in groups.items():
        answers_ok = all(len(texts[i].ids) > len(prefix) for i in members)
        row_tokens = len(prefix) + sum(len(texts[i].ids) - len(prefix) for i in members)
        wants_cache = config.sharing_method == "cache" or (
            len(members) > 1
            and (not packed_ok or (config.sharing_method == "auto" and row_tokens > PACKED_MAX_ROW_TOKENS))
        )
        if prefix and answers_ok and cache_ok and wants_cache:
            cached.append((prefix, members))
        elif packed_ok and (prefix or config.sharing_method != "cache"):
            packed.extend(members)
        else:
            plain.extend(members)
    return sorted(plain), sorted(packed), cached


def supports_prompt_cache(lm: LoadedModel, deepest: int) -> bool:
    """Whether prompt keys/values can be cached and continued from, up to layer `deepest` (1..L).

    The hooks must find the blocks (and the final norm when L is read), the base model must take
    a `cache`, and every layer of its DynamicCache must be a plain full-attention one: a sliding-
    window or hybrid cache keeps only part of the prompt, which the copies below would not respect.
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer

    base = lm.model.base_model
    blocks, norm = model_blocks(lm)
    if blocks is None or (deepest == lm.num_layers and norm is None):
        return False
    if "cache" not in inspect.signature(base.forward).parameters:
        return False
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=lm.model.config).layers)


def encode_with_cache(
    lm: LoadedModel,
    groups: Sequence[tuple[tuple[int, ...], list[int]]],
    texts: Sequence[TokenizedText],
    layers: Sequence[int],
    config: EncodeConfig,
    out: dict,
    bar: tqdm,
) -> int:
    """Encode each distinct prompt once, then all its answers continuing from its keys/values.

    A batch of prompts runs once with a cache; the forward stops after the deepest needed layer, so
    the cache holds exactly the blocks that the answer passes run. Their answers then run in
    right-padded sub-batches (under the same row and token budgets, counting the prompt width),
    each row with its own prompt's keys/values. Returns the tokens run (each prompt once, no padding).
    """
    n_forward = 0
    prompt_lengths = [len(prefix) for prefix, _ in groups]
    for batch in plan_batches(prompt_lengths, config.batch_size, config.max_batch_tokens, config.max_padding):
        prompts = [groups[i] for i in batch]
        keys_values, prompt_mask = prompt_cache(lm, [prefix for prefix, _ in prompts], layers)
        answers = [(row, index) for row, (_, members) in enumerate(prompts) for index in members]
        lengths = [len(texts[index].ids) - texts[index].answer_start for _, index in answers]
        # A row reads the whole prompt width as well, so budget and padding share count it: short
        # answers of one prompt then run together instead of in many small forwards.
        widths = [prompt_mask.shape[1] + length for length in lengths]
        for sub in plan_batches(widths, config.batch_size, config.max_batch_tokens, config.max_padding):
            inputs, spans = answer_inputs(lm, [answers[i] for i in sub], texts, keys_values, prompt_mask)
            pool_spans(capture_hidden(lm, layers=layers, **inputs), spans, config.poolings, out)
            bar.update(len(spans))
        n_forward += sum(prompt_lengths[i] for i in batch) + sum(lengths)
    return n_forward


def prompt_cache(lm: LoadedModel, prompts: Sequence[tuple[int, ...]], layers: Sequence[int]):
    """Run prompts left-padded (each ends in the last column); return per-block (keys, values) and the 2D mask.

    Positions count from each prompt's first real token, as if it ran alone.
    """
    from transformers import DynamicCache

    width = max(len(prefix) for prefix in prompts)
    ids = torch.full((len(prompts), width), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    positions = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, prefix in enumerate(prompts):
        ids[r, width - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
        mask[r, width - len(prefix) :] = 1
        positions[r, width - len(prefix) :] = torch.arange(len(prefix))
    cache = DynamicCache(config=lm.model.config)
    mask = mask.to(lm.device)
    capture_hidden(lm, ids.to(lm.device), mask, layers, position_ids=positions.to(lm.device), cache=cache)
    layers_held: list[Any] = list(cache.layers)
    keys_values = [(layer.keys, layer.values) for layer in layers_held if layer.get_seq_length() > 0]
    needed = min(max(layers), lm.num_layers)  # blocks that run up to the deepest layer
    if len(keys_values) != needed:
        raise RuntimeError(f"prompt cache holds {len(keys_values)} layers, expected {needed}")
    return keys_values, mask


def answer_inputs(
    lm: LoadedModel,
    answers: Sequence[tuple[int, int]],
    texts: Sequence[TokenizedText],
    keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]],
    prompt_mask: torch.Tensor,
):
    """Right-padded answers (prompt row, text index) with their prompts' keys/values as a fresh cache.

    The mask is prompt mask ⊕ answer mask, and positions continue after each prompt's real length.
    """
    from transformers import DynamicCache

    lengths = [len(texts[index].ids) - texts[index].answer_start for _, index in answers]
    width = max(lengths)
    ids = torch.full((len(answers), width), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(answers), width), dtype=torch.long)
    spans = []
    for r, ((_, index), length) in enumerate(zip(answers, lengths)):
        text = texts[index]
        ids[r, :length] = torch.tensor(text.ids[text.answer_start :], dtype=torch.long)
        mask[r, :length] = 1
        spans.append(Span(index, r, 0, length))
    device = prompt_mask.device
    rows = torch.tensor([row for row, _ in answers], device=device)
    # A dispatched model keeps each block's keys/values on that block's device.
    cache = DynamicCache(
        ddp_cache_data=[(keys[rows.to(keys.device)], values[rows.to(values.device)]) for keys, values in keys_values]
    )
    prompt = prompt_mask[rows]
    positions = prompt.sum(1, keepdim=True) + torch.arange(width, device=device)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.cat([prompt, mask.to(device)], 1),
        "position_ids": positions,
        "cache": cache,
    }, spans
