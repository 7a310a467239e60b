"""The `Encoder` interface: (prompt, answer) texts + layers + poolings -> pooled hidden states.

Everything that needs hidden states (direction building, selection sweeps, margins, scoring, the
engines) calls an Encoder, so another way of getting them — another inference backend, a
data-parallel or a caching encoder — is one class meeting the protocol plus one `register_encoder`
line, and `legend annotate --encoder NAME` uses it. The built-in `transformers` encoder runs a
transformers model with layer hooks: only the layers up to the deepest one asked for run (early
exit), and texts that share a prompt run it once (prefix sharing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from ..models import LoadedModel, ModelSpec, as_loaded
from ..registries import ENCODERS
from .batching import PackedRow, pack_by_prefix, packed_inputs, padded_inputs, plan_batches, row_length
from .capture import capture_hidden
from .config import EncodeConfig, Encoded, Item, TokenizedText, resolve_layer
from .pooling import pool_spans
from .sharing import encode_with_cache, sharing_routes
from .templates import TemplateError, tokenize_items


@dataclass(frozen=True)
class EncoderCapabilities:
    """What an encoder can do beyond the protocol's minimum (recorded in each annotation's summary)."""

    prefix_sharing: bool = False  # texts with the same prompt run the prompt once
    early_exit: bool = False  # only the layers up to the deepest one asked for run
    thread_safe: bool = False  # several threads may call `encode` on one instance


class ModelIdentity(Protocol):
    """What identifies a model's hidden states: a direction checks these against the model it meets
    (a LoadedModel and every Encoder have them)."""

    @property
    def model_id(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def num_layers(self) -> int: ...


@runtime_checkable
class Encoder(ModelIdentity, Protocol):
    """Turns texts into pooled hidden states of one model.

    `encode(items, config)` takes (prompt messages, answer) items and an `EncodeConfig` (layers as
    `output_hidden_states` numbers them, negative from the end; poolings from `POOLINGS`; template;
    max length and batching) and returns an `Encoded` whose `vectors[(layer, pooling)]` is a float32
    tensor [len(items), hidden_size] in item order, with layers keyed as the config names them. The
    identity fields let a direction refuse a model it was not made for.
    """

    name: ClassVar[str]
    capabilities: ClassVar[EncoderCapabilities]

    @property
    def dtype_name(self) -> str: ...

    @property
    def tokenizer(self) -> Any: ...

    def encode(self, items: Sequence[Item], config: EncodeConfig) -> Encoded: ...


# A factory builds an encoder for a model: a loaded one, a spec to load, a name, or None for `fallback`
# (the model a direction records).
EncoderFactory = Callable[[LoadedModel | ModelSpec | str | None, str | None], Encoder]
DEFAULT_ENCODER = "transformers"


def register_encoder(
    name: str, factory: EncoderFactory, *, description: str | None = None, replace: bool = False
) -> EncoderFactory:
    """Make an encoder available as `--encoder NAME` (and `AnnotateSettings(encoder=NAME)`).

    Args:
        name: the encoder's name.
        factory: `(model, fallback) -> Encoder`; `model` is a LoadedModel, a ModelSpec, a model name or
            None (then `fallback`, the model id a direction records, is meant). `legend.models.as_loaded`
            turns any of them into a LoadedModel when the encoder runs a transformers model.
        description: one line for help texts.
        replace: replace an existing encoder of that name.

    Returns:
        `factory`.

    >>> class Counting(TransformersEncoder):  # the built-in encoder, counting its calls
    ...     calls = 0
    ...     def encode(self, items, config):
    ...         Counting.calls += 1
    ...         return super().encode(items, config)
    >>> _ = register_encoder("counting", lambda model, fallback: Counting(as_loaded(model, fallback)),
    ...                      description="the transformers encoder, counting its calls")
    >>> from legend.testing import tiny_model
    >>> encoder = load_encoder("counting", tiny_model())
    >>> encoder.encode([((), "Hello.")], EncodeConfig()).get(-1, "last").shape, Counting.calls
    (torch.Size([1, 32]), 1)
    >>> _ = ENCODERS.unregister("counting")
    """
    return ENCODERS.register(name, factory, description=description, replace=replace)


def load_encoder(name: str, model: LoadedModel | ModelSpec | str | None, fallback: str | None = None) -> Encoder:
    """The encoder `name` for `model` (loading the model if needed).

    >>> load_encoder("nope", None)
    Traceback (most recent call last):
    ...
    ValueError: unknown encoder 'nope'; choose from transformers
    """
    return ENCODERS[name](model, fallback)


def as_encoder(model: Encoder | LoadedModel) -> Encoder:
    """An Encoder as it is, or a loaded transformers model wrapped in the default encoder."""
    if isinstance(model, LoadedModel):
        return TransformersEncoder(model)
    if isinstance(model, Encoder):
        return model
    raise TypeError(f"expected an Encoder or a LoadedModel, got {type(model).__name__}")


def encode(model: Encoder | LoadedModel, items: Sequence[Item], config: EncodeConfig) -> Encoded:
    """Encode (prompt messages, response) items with `model`'s encoder (see `Encoder.encode`)."""
    return as_encoder(model).encode(items, config)


# ---------------------------------------------------------------- the built-in transformers encoder


@dataclass(eq=False)
class TransformersEncoder:
    """A transformers causal LM read through layer hooks: early exit, prefix sharing, thread-safe capture."""

    lm: LoadedModel
    name: ClassVar[str] = DEFAULT_ENCODER
    capabilities: ClassVar[EncoderCapabilities] = EncoderCapabilities(
        prefix_sharing=True, early_exit=True, thread_safe=True
    )

    @property
    def model_id(self) -> str:
        return self.lm.model_id

    @property
    def fingerprint(self) -> str:
        return self.lm.fingerprint

    @property
    def hidden_size(self) -> int:
        return self.lm.hidden_size

    @property
    def num_layers(self) -> int:
        return self.lm.num_layers

    @property
    def dtype_name(self) -> str:
        return self.lm.dtype_name

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    def encode(self, items: Sequence[Item], config: EncodeConfig) -> Encoded:
        """Encode (prompt messages, response) items; identical items are computed once."""
        keys = [(tuple((m["role"], m["content"]) for m in prompt), response) for prompt, response in items]
        first_index: dict[tuple, int] = {}
        unique_items: list[Item] = []
        for key, item in zip(keys, items):
            if key not in first_index:
                first_index[key] = len(unique_items)
                unique_items.append(item)
        try:
            tokenized = tokenize_items(self.lm.tokenizer, unique_items, config)
        except TemplateError as err:
            if err.item is None:
                raise
            first = next(i for i, key in enumerate(keys) if first_index[key] == err.item)
            raise TemplateError(str(err), item=first) from None
        encoded = encode_tokenized(self.lm, tokenized, config)
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
            answer_cut=[encoded.answer_cut[i] for i in gather.tolist()] if encoded.answer_cut else [],
        )


def _transformers_factory(model: LoadedModel | ModelSpec | str | None, fallback: str | None) -> Encoder:
    return TransformersEncoder(as_loaded(model, fallback=fallback))


register_encoder(DEFAULT_ENCODER, _transformers_factory)  # described in legend.registries


def encode_tokenized(lm: LoadedModel, texts: Sequence[TokenizedText], config: EncodeConfig) -> Encoded:
    """Encode already tokenised texts; the result is in input order and independent of batching.

    With `config.prefix_sharing`, texts with the same prompt tokens run the prompt once, in one of
    two ways (`config.sharing_method`, chosen per prompt by `sharing_routes`): packed into one row
    with a block mask (`pack_by_prefix`), or the prompt encoded once and each answer continued from
    its cached keys/values (`encode_with_cache`). Otherwise each text is its own right-padded row.
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
        n_forward += encode_with_cache(lm, cached, texts, layers, config, out, bar)
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
        answer_cut=[t.answer_cut for t in texts],
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
    pad = lm.tokenizer.pad_token_id
    for batch in plan_batches(lengths, config.batch_size, config.max_batch_tokens, config.max_padding):
        batch_rows = [rows[i] for i in batch]
        if packed:
            inputs, spans = packed_inputs(lm.model, pad, lm.device, batch_rows, texts)
        else:
            inputs, spans = padded_inputs(pad, lm.device, batch_rows, texts)
        hidden = capture_hidden(lm, layers=layers, **inputs)
        pool_spans(hidden, spans, config.poolings, out)
        bar.update(len(spans))
    return sum(lengths)
