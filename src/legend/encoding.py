"""The one place that knows about tokens: templates, truncation, batching, layer capture, pooling.

A text to encode is a (prompt messages, response) pair. It is rendered with the model's chat
template when it has one (else the plain template below), tokenised as prefix + answer so the answer
span is known exactly, truncated from the left, batched by a token budget, run through only the
layers needed, and pooled.

Layer numbering follows `output_hidden_states`: 0 is the embedding output, i (1..L-1) the output
of decoder block i, and L the output of the last block after the final norm. Negative numbers count
from L + 1, so -1 is L (the paper's "last layer").
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from .models import LoadedModel

logger = logging.getLogger(__name__)

Message = dict[str, str]
Pooling = Literal["last", "mean"]
POOLINGS: tuple[str, ...] = ("last", "mean")
TemplateKind = Literal["auto", "chat", "plain"]
SharingMethod = Literal["auto", "packed", "cache"]
SHARING_METHODS: tuple[str, ...] = ("auto", "packed", "cache")
# "auto" packs a prompt and its answers into one row up to this many tokens, and uses the KV cache
# above it (measured on CPU with SmolLM2: packed rows win ~1.2x at 480 tokens, the cache ~1.2x at
# 1,550 and 2x at 4,800; docs/speed.md).
PACKED_MAX_ROW_TOKENS = 1024
DEFAULT_MAX_LENGTH = 2048

PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
PLAIN_TEMPLATE_DOC = (
    "plain: each prompt message as '<Role>: <content>\\n\\n' (Human/Assistant/System), "
    "then 'Assistant: ' and the response; the tokenizer's BOS is added when it uses one"
)


@dataclass(frozen=True)
class EncodeConfig:
    """How texts become vectors. Created once at the edge (CLI or API call) and passed down."""

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
        bad = [p for p in self.poolings if p not in POOLINGS]
        if bad:
            raise ValueError(f"unknown pooling {bad[0]!r}; choose from {', '.join(POOLINGS)}")
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

    def get(self, layer: int, pooling: str) -> torch.Tensor:
        return self.vectors[(layer, pooling)]


@dataclass(frozen=True)
class TokenizedText:
    ids: tuple[int, ...]
    answer_start: int  # index of the first answer token in `ids`
    truncated: bool


def resolve_layer(layer: int, num_layers: int) -> int:
    """Map a user layer (negative counts from the end) to 0..num_layers."""
    resolved = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= resolved <= num_layers:
        raise ValueError(f"layer {layer} is out of range for a model with {num_layers} layers (0..{num_layers})")
    return resolved


def template_kind(tokenizer: Any, template: str = "auto") -> Literal["chat", "plain"]:
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template not in ("chat", "plain"):
        raise ValueError(f"unknown template {template!r}; choose from auto, chat, plain")
    return "chat" if template == "chat" else "plain"


def render(tokenizer: Any, prompt: Sequence[Message], response: str, kind: Literal["chat", "plain"]) -> tuple[str, str]:
    """Return (prefix, answer) strings; prefix + answer is the full text the model reads."""
    if kind == "plain":
        prefix = "".join(f"{PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}\n\n" for m in prompt)
        return prefix + "Assistant: ", response
    messages = [dict(m) for m in prompt]
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) if messages else ""
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if prefix and full.startswith(prefix):
        # Drop the template's trailing newline so the last token is the end-of-turn marker.
        return prefix, full[len(prefix) :].rstrip("\n")
    # Templates that rewrite earlier turns (rare): keep the generation prompt, append the response.
    return prefix, response + (getattr(tokenizer, "eos_token", None) or "")


def tokenize_items(
    tokenizer: Any,
    items: Sequence[tuple[Sequence[Message], str]],
    config: EncodeConfig,
) -> list[TokenizedText]:
    """Tokenise (prompt, response) items as prefix ids + answer ids, truncating from the left."""
    kind = template_kind(tokenizer, config.template)
    rendered = [render(tokenizer, prompt, response, kind) for prompt, response in items]
    unique_prefixes = list(dict.fromkeys(prefix for prefix, _ in rendered))
    # Plain text needs the tokenizer's BOS; chat templates already write their own special tokens.
    prefix_ids = dict(zip(unique_prefixes, _batch_ids(tokenizer, unique_prefixes, kind == "plain")))
    answer_ids = _batch_ids(tokenizer, [answer for _, answer in rendered], False)
    out = []
    for (prefix, _), answer in zip(rendered, answer_ids):
        out.append(_truncate_left(prefix_ids[prefix], answer, config.length_limit))
    return out


def _batch_ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


def _truncate_left(prefix: list[int], answer: list[int], max_length: int) -> TokenizedText:
    if not answer:
        # An empty answer still needs a position to read: use the last prompt token.
        answer, prefix = prefix[-1:], prefix[:-1]
    ids = list(prefix) + list(answer)
    cut = max(0, len(ids) - max_length)
    return TokenizedText(ids=tuple(ids[cut:]), answer_start=max(0, len(prefix) - cut), truncated=cut > 0)


def plan_batches(
    lengths: Sequence[int], batch_size: int, max_batch_tokens: int, max_padding: float = 0.1
) -> list[list[int]]:
    """Group indices into batches of similar length, longest first, under three limits.

    A batch holds at most `batch_size` items and `max_batch_tokens` padded tokens, and an item joins
    only if it is at least (1 - `max_padding`) of the batch's width. The last limit matters when
    lengths are spread (small runs, packed rows): a batch of 544 and 226 tokens pads the short row
    to 544 and that compute is lost; in large runs neighbours have near-equal lengths and batches
    fill anyway. `max_padding=1` turns it off.
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


class _StopForward(Exception):
    """Raised by a hook once the deepest needed layer has run, so later layers are skipped."""


BLOCK_NAMES = ("layers", "h", "blocks", "decoder.layers")
NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


def _attribute(root: Any, path: str) -> Any:
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


def find_blocks(base: torch.nn.Module, num_layers: int, path: str | None = None) -> torch.nn.ModuleList | None:
    """The list of decoder blocks of a base model (Llama/Mistral/Qwen `layers`, GPT-2 `h`, ...), or None.

    `path` is a user's dotted path to them (see `model_blocks`), tried instead of the known names.
    """
    for name in (path,) if path else BLOCK_NAMES:
        module = _attribute(base, name)
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return module
    return None


def find_final_norm(base: torch.nn.Module, path: str | None = None) -> torch.nn.Module | None:
    """The norm applied after the last block (what output_hidden_states[-1] includes), or None."""
    for name in (path,) if path else NORM_NAMES:
        module = _attribute(base, name)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _resolve_override(lm: LoadedModel, path: str, what: str) -> torch.nn.Module:
    """A user-named module, looked up from the model (e.g. "model.layers") or from its base model ("layers")."""
    for root in (lm.model, lm.model.base_model):
        module = _attribute(root, path)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"{what} {path!r}: no such module in {type(lm.model).__name__}")


def model_blocks(lm: LoadedModel) -> tuple[torch.nn.ModuleList | None, torch.nn.Module | None]:
    """The decoder blocks and final norm the hooks use: the user's `blocks_path`/`norm_path`, else the known names.

    A user path that does not lead to a ModuleList of `num_layers` blocks is an error (not a
    silent fallback). Without an override, a model whose blocks (or norm) are not found runs the
    slower full path (every layer's states, no early exit, no prompt cache); that is logged once
    per model, naming what was looked for.
    """
    base = lm.model.base_model
    if lm.blocks_path:
        module = _resolve_override(lm, lm.blocks_path, "--blocks-path")
        if not isinstance(module, torch.nn.ModuleList) or len(module) != lm.num_layers:
            size = len(module) if isinstance(module, torch.nn.ModuleList) else "not a ModuleList"
            raise ValueError(
                f"--blocks-path {lm.blocks_path!r}: expected a ModuleList of the model's {lm.num_layers} decoder "
                f"blocks, found {type(module).__name__} ({size})"
            )
        blocks: torch.nn.ModuleList | None = module
    else:
        blocks = find_blocks(base, lm.num_layers)
    norm = _resolve_override(lm, lm.norm_path, "--norm-path") if lm.norm_path else find_final_norm(base)
    if blocks is None or norm is None:
        _warn_slow_path(lm, blocks is None, norm is None)
    return blocks, norm


_WARNED: weakref.WeakSet = weakref.WeakSet()


def _warn_slow_path(lm: LoadedModel, no_blocks: bool, no_norm: bool) -> None:
    if lm.model in _WARNED:
        return
    _WARNED.add(lm.model)
    base = type(lm.model.base_model).__name__
    missing = []
    if no_blocks:
        missing.append(
            f"no ModuleList of {lm.num_layers} decoder blocks at {', '.join(BLOCK_NAMES)} of {base} "
            "(pass --blocks-path, e.g. model.layers)"
        )
    if no_norm:
        missing.append(f"no final norm at {', '.join(NORM_NAMES)} of {base} (pass --norm-path, e.g. model.norm)")
    logger.warning(
        "legend: %s; falling back to output_hidden_states (every layer's states, no early exit%s): slower",
        "; ".join(missing),
        ", no prompt cache" if no_blocks else " when the last layer is read",
    )


def _first_tensor(output: Any) -> torch.Tensor:
    first: torch.Tensor = output[0] if isinstance(output, (tuple, list)) else output
    return first


def capture_hidden(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    position_ids: torch.Tensor | None = None,
    cache: object | None = None,
) -> dict[int, torch.Tensor]:
    """Run the base model and return the hidden states [batch, seq, hidden] of `layers` (0..L).

    Hooks read the needed layers and stop the forward after the deepest one; no logits and no
    copy of every layer's states are made. Unknown architectures fall back to output_hidden_states.
    `attention_mask` is the usual 2D padding mask, or a ready 4D mask (with `position_ids`) for packed rows.
    With a transformers `cache` (a DynamicCache) the run continues from the keys/values it holds and
    adds its own, for the blocks that ran (see `_encode_with_cache`).
    """
    base = lm.model.base_model
    num_layers = lm.num_layers
    blocks, norm = model_blocks(lm)
    wanted = sorted(set(layers))
    extra: dict[str, Any] = {} if position_ids is None else {"position_ids": position_ids}
    use_cache = cache is not None
    if use_cache:
        extra["cache"] = cache
    if blocks is None or (num_layers in wanted and norm is None):
        hidden = base(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=use_cache, **extra
        ).hidden_states
        return {layer: hidden[layer] for layer in wanted}

    captured: dict[int, torch.Tensor] = {}
    deepest = wanted[-1]
    handles = []

    def keep(layer: int, tensor: torch.Tensor) -> None:
        captured[layer] = tensor
        if layer == deepest:
            raise _StopForward

    if 0 in wanted:
        # The input of the first block, which (unlike the embedding module's output) includes any scaling.
        handles.append(
            blocks[0].register_forward_pre_hook(
                lambda _m, args, kwargs: keep(0, args[0] if args else kwargs["hidden_states"]), with_kwargs=True
            )
        )
    for layer in wanted:
        if 0 < layer < num_layers:
            handles.append(
                blocks[layer - 1].register_forward_hook(
                    lambda _m, _a, out, layer=layer: keep(layer, _first_tensor(out))
                )
            )
    if num_layers in wanted:
        assert norm is not None  # checked above: without a final norm the plain path runs
        handles.append(norm.register_forward_hook(lambda _m, _a, out: keep(num_layers, _first_tensor(out))))
    try:
        base(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **extra)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def pool(hidden: torch.Tensor, lengths: torch.Tensor, answer_starts: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool right-padded states [batch, seq, hidden]: the last real token, or the mean over the answer."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "last":
        return hidden[rows, lengths - 1]
    positions = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
    mask = ((positions >= answer_starts[:, None]) & (positions < lengths[:, None])).to(hidden.dtype)
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


def encode_tokenized(lm: LoadedModel, texts: Sequence[TokenizedText], config: EncodeConfig) -> Encoded:
    """Encode already tokenised texts; the result is in input order and independent of batching.

    With `config.prefix_sharing`, texts with the same prompt tokens run the prompt once, in one of
    two ways (`config.sharing_method`, chosen per prompt by `sharing_routes`): packed into one row
    with a block mask (`pack_by_prefix`), or the prompt encoded once and each answer continued from
    its cached keys/values (`_encode_with_cache`). Otherwise each text is its own right-padded row.
    """
    layers = tuple(dict.fromkeys(resolve_layer(layer, lm.num_layers) for layer in config.layers))
    out = {
        (layer, pooling): torch.empty(len(texts), lm.hidden_size, dtype=torch.float32)
        for layer in layers
        for pooling in config.poolings
    }
    plain, packed, cached = sharing_routes(lm, texts, config, max(layers))
    bar = tqdm(total=len(texts), desc=config.description, unit="text", disable=not config.progress, smoothing=0.1)
    with torch.inference_mode():
        rows = [PackedRow(prefix=(), members=(i,)) for i in plain]
        n_forward = _encode_rows(lm, rows, texts, False, layers, config, out, bar)
        subset = [texts[i] for i in packed]
        rows = [
            PackedRow(row.prefix, tuple(packed[m] for m in row.members))
            for row in pack_by_prefix(subset, 2 * config.length_limit)
        ]
        n_forward += _encode_rows(lm, rows, texts, True, layers, config, out, bar)
        n_forward += _encode_with_cache(lm, cached, texts, layers, config, out, bar)
    bar.close()
    # Keys use the layer as the user named it, so callers can look up what they asked for.
    named = {}
    for layer in config.layers:
        for pooling in config.poolings:
            named[(layer, pooling)] = out[(resolve_layer(layer, lm.num_layers), pooling)]
    return Encoded(
        vectors=named,
        n_texts=len(texts),
        n_truncated=sum(t.truncated for t in texts),
        n_tokens=sum(len(t.ids) for t in texts),
        truncated=[t.truncated for t in texts],
        n_forward_tokens=n_forward,
    )


def _encode_rows(
    lm: LoadedModel,
    rows: Sequence[PackedRow],
    texts: Sequence[TokenizedText],
    packed: bool,
    layers: Sequence[int],
    config: EncodeConfig,
    out: dict,
    bar: tqdm,
) -> int:
    """Run plain (one text each) or packed rows in token-budget batches; return the tokens run."""
    lengths = [row_length(row, texts, packed) for row in rows]
    for batch in plan_batches(lengths, config.batch_size, config.max_batch_tokens, config.max_padding):
        batch_rows = [rows[i] for i in batch]
        inputs, spans = (_packed_inputs if packed else _padded_inputs)(lm, batch_rows, texts)
        hidden = capture_hidden(lm, layers=layers, **inputs)
        _pool_spans(hidden, spans, config.poolings, out)
        bar.update(len(spans))
    return sum(lengths)


# ---------------------------------------------------------------- prefix sharing


@dataclass(frozen=True)
class PackedRow:
    """One model input: a shared prompt, then the answers of `members` one after another.

    Each answer sees the prompt and itself only (a block mask), and its positions continue right
    after the prompt, so its states equal those of prompt ⊕ answer run alone, while the prompt's
    keys/values are computed once for all members. Without sharing a row holds one whole text.
    """

    prefix: tuple[int, ...]
    members: tuple[int, ...]


@dataclass(frozen=True)
class _Span:
    text: int  # index into the texts being encoded
    row: int  # row of the batch
    start: int  # first answer position in the row (mean pooling)
    end: int  # one past the last position of the text in the row


def supports_packed_rows(lm: LoadedModel) -> bool:
    """Whether the model's attention accepts our 4D block mask (eager and sdpa do; flash/flex do not)."""
    return getattr(lm.model.config, "_attn_implementation", "eager") in ("eager", "sdpa")


def pack_by_prefix(texts: Sequence[TokenizedText], max_row_tokens: int) -> list[PackedRow]:
    """Group texts by their prompt tokens (after truncation) into rows of at most `max_row_tokens`.

    Groups are in first-seen order; a prompt with more answers than fit is split over several rows.
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
    if not shared:
        return len(texts[row.members[0]].ids)
    return len(row.prefix) + sum(len(texts[i].ids) - len(row.prefix) for i in row.members)


def _padded_inputs(lm: LoadedModel, rows: Sequence[PackedRow], texts: Sequence[TokenizedText]):
    """Right-padded batch of whole texts with a 2D padding mask."""
    lengths = [len(texts[row.members[0]].ids) for row in rows]
    ids = torch.full((len(rows), max(lengths)), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), max(lengths)), dtype=torch.long)
    spans = []
    for r, (row, length) in enumerate(zip(rows, lengths)):
        text = texts[row.members[0]]
        ids[r, :length] = torch.tensor(text.ids)
        mask[r, :length] = 1
        spans.append(_Span(row.members[0], r, text.answer_start, length))
    return {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device)}, spans


def _packed_inputs(lm: LoadedModel, rows: Sequence[PackedRow], texts: Sequence[TokenizedText]):
    """Packed rows with positions restarting after the prompt for each answer and a 4D block mask."""
    width = max(row_length(row, texts, True) for row in rows)
    ids = torch.full((len(rows), width), lm.tokenizer.pad_token_id, dtype=torch.long)
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
            spans.append(_Span(index, r, cursor - n_prefix + texts[index].answer_start, end))
            cursor = end
    return {
        "input_ids": ids.to(lm.device),
        "attention_mask": _block_mask(lm, segments).to(lm.device),
        "position_ids": positions.to(lm.device),
    }, spans


def _block_mask(lm: LoadedModel, segments: torch.Tensor) -> torch.Tensor:
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
    if lm.model.config._attn_implementation == "sdpa":
        return allowed
    dtype = getattr(lm.model, "dtype", None) or next(lm.model.parameters()).dtype  # eager adds it to the scores
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)


def _pool_spans(
    hidden: dict[int, torch.Tensor],
    spans: Sequence[_Span],
    poolings: Sequence[str],
    out: dict[tuple[int, str], torch.Tensor],
) -> None:
    """Write the pooled state of each span into `out[(layer, pooling)][span.text]`."""
    texts = torch.tensor([s.text for s in spans])
    for layer, states in hidden.items():
        states = states.float()
        if "last" in poolings:
            rows = torch.tensor([s.row for s in spans], device=states.device)
            ends = torch.tensor([s.end - 1 for s in spans], device=states.device)
            out[(layer, "last")][texts] = states[rows, ends].cpu()
        if "mean" in poolings:
            means = torch.stack([states[s.row, s.start : s.end].mean(0) for s in spans])
            out[(layer, "mean")][texts] = means.cpu()


# ---------------------------------------------------------------- prefix sharing through a KV cache


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
    packed_ok = supports_packed_rows(lm)
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


def _encode_with_cache(
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
        keys_values, prompt_mask = _prompt_cache(lm, [prefix for prefix, _ in prompts], layers)
        answers = [(row, index) for row, (_, members) in enumerate(prompts) for index in members]
        lengths = [len(texts[index].ids) - texts[index].answer_start for _, index in answers]
        # A row reads the whole prompt width as well, so budget and padding share count it: short
        # answers of one prompt then run together instead of in many small forwards.
        widths = [prompt_mask.shape[1] + length for length in lengths]
        for sub in plan_batches(widths, config.batch_size, config.max_batch_tokens, config.max_padding):
            inputs, spans = _answer_inputs(lm, [answers[i] for i in sub], texts, keys_values, prompt_mask)
            _pool_spans(capture_hidden(lm, layers=layers, **inputs), spans, config.poolings, out)
            bar.update(len(spans))
        n_forward += sum(prompt_lengths[i] for i in batch) + sum(lengths)
    return n_forward


def _prompt_cache(lm: LoadedModel, prompts: Sequence[tuple[int, ...]], layers: Sequence[int]):
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


def _answer_inputs(
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
        spans.append(_Span(index, r, 0, length))
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


def encode(lm: LoadedModel, items: Sequence[tuple[Sequence[Message], str]], config: EncodeConfig) -> Encoded:
    """Encode (prompt messages, response) items; identical items are computed once."""
    keys = [(tuple((m["role"], m["content"]) for m in prompt), response) for prompt, response in items]
    first_index: dict[tuple, int] = {}
    unique_items: list[tuple[Sequence[Message], str]] = []
    for key, item in zip(keys, items):
        if key not in first_index:
            first_index[key] = len(unique_items)
            unique_items.append(item)
    tokenized = tokenize_items(lm.tokenizer, unique_items, config)
    encoded = encode_tokenized(lm, tokenized, config)
    if len(unique_items) == len(items):
        return encoded
    gather = torch.tensor([first_index[key] for key in keys])
    return Encoded(
        vectors={k: v[gather] for k, v in encoded.vectors.items()},
        n_texts=len(items),
        n_truncated=sum(encoded.truncated[i] for i in gather.tolist()),
        n_tokens=encoded.n_tokens,
        truncated=[encoded.truncated[i] for i in gather.tolist()],
        n_forward_tokens=encoded.n_forward_tokens,
    )


def question_items(questions: Sequence[str], answers: Sequence[str]) -> list[tuple[tuple[Message, ...], str]]:
    """(question, answer) pairs as single-turn items."""
    return [(({"role": "user", "content": q},), a) for q, a in zip(questions, answers)]
