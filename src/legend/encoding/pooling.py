"""Poolings: how one text's hidden states at a layer become one vector (an extension point).

A pooling is a function `(states, spans) -> vectors`: `states` is a float32 batch of hidden states
[rows, positions, hidden] and each `Span` says which row holds a text and where its answer starts
and ends; it returns one vector per span [len(spans), hidden]. Register a new one with
`register_pooling` and every command that takes `--pooling` accepts it; help texts are generated
from `POOLINGS`.

>>> import torch
>>> states = torch.arange(12.0).reshape(1, 4, 3)  # one row, 4 positions, hidden size 3
>>> span = Span(text=0, row=0, start=1, end=3)  # the answer is positions 1..2
>>> POOLINGS["last"](states, [span]).tolist(), POOLINGS["mean"](states, [span]).tolist()
([[6.0, 7.0, 8.0]], [[4.5, 5.5, 6.5]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..registries import POOLINGS


@dataclass(frozen=True)
class Span:
    """Where one text sits in a batch row."""

    text: int  # index into the texts being encoded
    row: int  # row of the batch
    start: int  # first answer position in the row
    end: int  # one past the last position of the text in the row


PoolingFn = Callable[[torch.Tensor, Sequence[Span]], torch.Tensor]


def register_pooling(
    name: str, function: PoolingFn, *, description: str | None = None, replace: bool = False
) -> PoolingFn:
    """Make `function` available as `--pooling NAME` (and `pooling=NAME` in every settings object).

    Args:
        name: the pooling's name.
        function: `(states [rows, positions, hidden] float32, spans) -> [len(spans), hidden]`.
        description: one line for help texts.
        replace: replace an existing pooling of that name.

    Returns:
        `function`.

    >>> _ = register_pooling("first", lambda s, spans: torch.stack([s[x.row, x.start] for x in spans]),
    ...                      description="the first answer token")
    >>> "first" in POOLINGS
    True
    >>> _ = POOLINGS.unregister("first")
    """
    return POOLINGS.register(name, function, description=description, replace=replace)


def pool_last(states: torch.Tensor, spans: Sequence[Span]) -> torch.Tensor:
    """The state of each text's last token (the end-of-turn marker of the answer, with a chat template)."""
    rows = torch.tensor([s.row for s in spans], device=states.device)
    ends = torch.tensor([s.end - 1 for s in spans], device=states.device)
    return states[rows, ends]


def pool_mean(states: torch.Tensor, spans: Sequence[Span]) -> torch.Tensor:
    """The mean of each text's answer-token states (the prompt is read, only answer positions are pooled)."""
    return torch.stack([states[s.row, s.start : s.end].mean(0) for s in spans])


register_pooling("last", pool_last)  # described in legend.registries
register_pooling("mean", pool_mean)


def pool_spans(
    hidden: dict[int, torch.Tensor],
    spans: Sequence[Span],
    poolings: Sequence[str],
    out: dict[tuple[int, str], torch.Tensor],
) -> None:
    """Write the pooled state of each span into `out[(layer, pooling)][span.text]`, for every captured layer."""
    texts = torch.tensor([s.text for s in spans])
    for layer, states in hidden.items():
        states = states.float()
        for pooling in poolings:
            out[(layer, pooling)][texts] = POOLINGS[pooling](states, spans).cpu()
