"""Batches of model inputs: length-aware batch plans, plain padded rows, and packed rows sharing a prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .config import TokenizedText
from .pooling import Span


def plan_batches(
    lengths: Sequence[int], batch_size: int, max_batch_tokens: int, max_padding: float = 0.1
) -> list[list[int]]:
    """Group indices into batches of similar length, longest first, under three limits.

    A batch holds at most `batch_size` items and `max_batch_tokens` padded tokens, and an item joins
    only if it is at least (1 - `max_padding`) of the batch's width. The last limit matters when
    lengths are spread (small runs, packed rows): a batch of 544 and 226 tokens pads the short row
    to 544 and that compute is lost; in large runs neighbours have near-equal lengths and batches
    fill anyway. `max_padding=1` turns it off.

    >>> plan_batches([5, 100, 98, 7], batch_size=8, max_batch_tokens=1000)
    [[1, 2], [3], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        if current and (
            len(current) >= batch_size
            or width * (len(current) + 1) > max_batch_tokens
            or lengths[index] < (1 - max_padding) * width
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class PackedRow:
    """One model input: a shared prompt, then the answers of `members` one after another.

    Each answer sees the prompt and itself only (a block mask), and its positions continue right
    after the prompt, so its states equal those of prompt ⊕ answer run alone, while the prompt's
    keys/values are computed once for all members. Without sharing a row holds one whole text.
    """

    prefix: tuple[int, ...]
    members: tuple[int, ...]


def supports_packed_rows(model: Any) -> bool:
    """Whether the model's attention accepts our 4D block mask (eager and sdpa do; flash/flex do not)."""
    return getattr(model.config, "_attn_implementation", "eager") in ("eager", "sdpa")


def pack_by_prefix(texts: Sequence[TokenizedText], max_row_tokens: int) -> list[PackedRow]:
    """Group texts by their prompt tokens (after truncation) into rows of at most `max_row_tokens`.

    Groups are in first-seen order; a prompt with more answers than fit is split over several rows.

    >>> texts = [TokenizedText((1, 2, 3), 2, False), TokenizedText((1, 2, 4, 5), 2, False)]
    >>> pack_by_prefix(texts, 100)
    [PackedRow(prefix=(1, 2), members=(0, 1))]
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, text in enumerate(texts):
        groups.setdefault(text.ids[: text.answer_start], []).append(index)
    rows = []
    for prefix, members in groups.items():
        current: list[int] = []
        length = len(prefix)
        for index in members:
            answer = len(texts[index].ids) - len(prefix)
            if current and length + answer > max_row_tokens:
                rows.append(PackedRow(prefix, tuple(current)))
                current, length = [], len(prefix)
            current.append(index)
            length += answer
        rows.append(PackedRow(prefix, tuple(current)))
    return rows


def row_length(row: PackedRow, texts: Sequence[TokenizedText], shared: bool) -> int:
    """Tokens of a row: one whole text, or the shared prompt plus every member's answer."""
    if not shared:
        return len(texts[row.members[0]].ids)
    return len(row.prefix) + sum(len(texts[i].ids) - len(row.prefix) for i in row.members)


def padded_inputs(
    pad_token_id: int, device: torch.device, rows: Sequence[PackedRow], texts: Sequence[TokenizedText]
) -> tuple[dict[str, torch.Tensor], list[Span]]:
    """Right-padded batch of whole texts with a 2D padding mask."""
    lengths = [len(texts[row.members[0]].ids) for row in rows]
    ids = torch.full((len(rows), max(lengths)), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), max(lengths)), dtype=torch.long)
    spans = []
    for r, (row, length) in enumerate(zip(rows, lengths)):
        text = texts[row.members[0]]
        ids[r, :length] = torch.tensor(text.ids)
        mask[r, :length] = 1
        spans.append(Span(row.members[0], r, text.answer_start, length))
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, spans


def packed_inputs(
    model: Any, pad_token_id: int, device: torch.device, rows: Sequence[PackedRow], texts: Sequence[TokenizedText]
) -> tuple[dict[str, torch.Tensor], list[Span]]:
    """Packed rows with positions restarting after the prompt for each answer and a 4D block mask."""
    width = max(row_length(row, texts, True) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)  # -1 padding, 0 prompt, k answer k
    spans = []
    for r, row in enumerate(rows):
        n_prefix = len(row.prefix)
        ids[r, :n_prefix] = torch.tensor(row.prefix, dtype=torch.long)
        positions[r, :n_prefix] = torch.arange(n_prefix)
        segments[r, :n_prefix] = 0
        cursor = n_prefix
        for k, index in enumerate(row.members, start=1):
            answer = texts[index].ids[n_prefix:]
            end = cursor + len(answer)
            ids[r, cursor:end] = torch.tensor(answer, dtype=torch.long)
            positions[r, cursor:end] = torch.arange(n_prefix, n_prefix + len(answer))
            segments[r, cursor:end] = k
            spans.append(Span(index, r, cursor - n_prefix + texts[index].answer_start, end))
            cursor = end
    return {
        "input_ids": ids.to(device),
        "attention_mask": block_mask(model, segments).to(device),
        "position_ids": positions.to(device),
    }, spans


def block_mask(model: Any, segments: torch.Tensor) -> torch.Tensor:
    """[batch, 1, seq, seq] mask: causal, and a key is seen if it is prompt or in the query's own answer.

    Padding queries see themselves only, so no softmax row is empty (an empty row gives NaN).
    """
    width = segments.shape[1]
    index = torch.arange(width)
    causal = index[:, None] >= index[None, :]
    query, key = segments[:, :, None], segments[:, None, :]
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool)
    allowed = allowed[:, None]
    if model.config._attn_implementation == "sdpa":
        return allowed
    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype  # eager adds it to the scores
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
