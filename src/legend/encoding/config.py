"""What encoding takes and gives: `EncodeConfig` (the settings), `Encoded` (the result), tokenised texts, layers.

Layer numbering follows `output_hidden_states`: 0 is the embedding output, i (1..L-1) the output
of decoder block i, and L the output of the last block after the final norm. Negative numbers count
from L + 1, so -1 is L (the paper's "last layer").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .pooling import POOLINGS

Message = dict[str, str]
# One text to encode: the prompt messages before the answer, and the answer.
Item = tuple[Sequence[Message], str]
TemplateKind = Literal["auto", "chat", "plain"]
TEMPLATES: tuple[str, ...] = ("auto", "chat", "plain")
SharingMethod = Literal["auto", "packed", "cache"]
SHARING_METHODS: tuple[str, ...] = ("auto", "packed", "cache")
# "auto" packs a prompt and its answers into one row up to this many tokens, and uses the KV cache
# above it (measured on CPU with SmolLM2: packed rows win ~1.2x at 480 tokens, the cache ~1.2x at
# 1,550 and 2x at 4,800; docs/speed.md).
PACKED_MAX_ROW_TOKENS = 1024
DEFAULT_MAX_LENGTH = 2048


@dataclass(frozen=True)
class EncodeConfig:
    """How texts become vectors. Created once at the edge (CLI or API call) and passed down.

    >>> EncodeConfig(layers=(-1, 12), poolings=("mean",)).length_limit
    2048
    >>> EncodeConfig(poolings=("median",))
    Traceback (most recent call last):
    ...
    ValueError: unknown pooling 'median'; choose from last, mean
    """

    layers: tuple[int, ...] = (-1,)
    poolings: tuple[str, ...] = ("last",)
    template: str = "auto"  # TemplateKind
    # Longest text in tokens (longer ones lose their start); None: the direction's, or DEFAULT_MAX_LENGTH.
    max_length: int | None = None
    batch_size: int = 16
    max_batch_tokens: int = 16384
    # Largest share of a batch row that may be padding (see plan_batches); 1 disables the limit.
    max_padding: float = 0.1
    progress: bool = False
    description: str = "encoding"
    # Texts with the same (token-level) prompt run the prompt once (see encode_tokenized).
    prefix_sharing: bool = True
    # How the prompt is shared: "packed" rows with a block mask, "cache" (prompt keys/values reused),
    # or "auto" (packed for short rows where the attention takes our mask, else cache; see sharing_routes).
    sharing_method: str = "auto"  # SharingMethod

    def __post_init__(self) -> None:
        for pooling in self.poolings:
            POOLINGS.check(pooling)
        if self.max_length is not None and self.max_length < 2:
            raise ValueError("max_length must be at least 2")
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise ValueError("batch_size and max_batch_tokens must be at least 1")
        if not 0 <= self.max_padding <= 1:
            raise ValueError("max_padding must be between 0 and 1")
        if self.sharing_method not in SHARING_METHODS:
            raise ValueError(
                f"unknown sharing_method {self.sharing_method!r}; choose from {', '.join(SHARING_METHODS)}"
            )

    @property
    def length_limit(self) -> int:
        """`max_length`, or DEFAULT_MAX_LENGTH when it is unset."""
        return self.max_length or DEFAULT_MAX_LENGTH


@dataclass
class Encoded:
    """Pooled hidden states keyed by (layer, pooling), each a float32 tensor [n_texts, hidden]."""

    vectors: dict[tuple[int, str], torch.Tensor]
    n_texts: int
    n_truncated: int = 0
    n_tokens: int = 0
    truncated: list[bool] = field(default_factory=list)
    n_forward_tokens: int = 0  # tokens actually run through the model (shared prompts counted once, no padding)
    # Per text: truncation removed most of its answer (`TokenizedText.answer_cut`); empty when the encoder does not say.
    answer_cut: list[bool] = field(default_factory=list)

    def get(self, layer: int, pooling: str) -> torch.Tensor:
        return self.vectors[(layer, pooling)]


ANSWER_CUT_SHARE = 0.5
"""A text "lost its answer" to truncation when more than this share of its answer's tokens (the response and the
template's end-of-turn marker) was cut from the left: what is left no longer stands for the answer."""


@dataclass(frozen=True)
class TokenizedText:
    """One text as token ids, with where its answer starts and whether its start was cut."""

    ids: tuple[int, ...]
    answer_start: int  # index of the first answer token in `ids`
    truncated: bool
    answer_tokens: int = 0  # tokens of the answer before truncation (0: not known)

    @property
    def answer_cut(self) -> bool:
        """Truncation removed more than `ANSWER_CUT_SHARE` of the answer's tokens.

        >>> TokenizedText((4, 5), 0, True, answer_tokens=5).answer_cut, TokenizedText((3, 4, 5), 1, True, 2).answer_cut
        (True, False)
        """
        kept = len(self.ids) - self.answer_start
        return self.answer_tokens > 0 and kept < (1 - ANSWER_CUT_SHARE) * self.answer_tokens


def resolve_layer(layer: int, num_layers: int) -> int:
    """Map a user layer (negative counts from the end) to 0..num_layers.

    >>> resolve_layer(-1, 30), resolve_layer(22, 30)
    (30, 22)
    """
    resolved = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= resolved <= num_layers:
        raise ValueError(f"layer {layer} is out of range for a model with {num_layers} layers (0..{num_layers})")
    return resolved
