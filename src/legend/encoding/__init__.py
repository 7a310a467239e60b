"""The one place that knows about tokens and hidden states (layer 2), one module per mechanism.

- `config`: `EncodeConfig` (the settings), `Encoded` (the result), `TokenizedText`, `resolve_layer`;
- `templates`: chat or plain template, prefix + answer tokenisation, left truncation;
- `batching`: length-aware batch plans, padded rows and packed rows sharing a prompt;
- `capture`: finding the decoder blocks, layer hooks with early exit, the per-model lock;
- `pooling`: the `POOLINGS` registry (`last`, `mean`; `register_pooling` adds one);
- `sharing`: prefix sharing through packed rows or a prompt KV cache;
- `encoder`: the `Encoder` protocol, the `ENCODERS` registry and the built-in transformers encoder;
- `generation`: greedy/sampled generation that tokenises prompts through `templates`.
"""

from .batching import (
    PackedRow,
    block_mask,
    pack_by_prefix,
    packed_inputs,
    padded_inputs,
    plan_batches,
    row_length,
    supports_packed_rows,
)
from .capture import BLOCK_NAMES, NORM_NAMES, capture_hidden, find_blocks, find_final_norm, model_blocks, model_lock
from .config import (
    ANSWER_CUT_SHARE,
    DEFAULT_MAX_LENGTH,
    PACKED_MAX_ROW_TOKENS,
    SHARING_METHODS,
    TEMPLATES,
    EncodeConfig,
    Encoded,
    Item,
    Message,
    SharingMethod,
    TemplateKind,
    TokenizedText,
    resolve_layer,
)
from .encoder import (
    DEFAULT_ENCODER,
    ENCODERS,
    Encoder,
    EncoderCapabilities,
    EncoderFactory,
    ModelIdentity,
    TransformersEncoder,
    as_encoder,
    encode,
    encode_tokenized,
    load_encoder,
    register_encoder,
)
from .generation import GenerationConfig, generate, prompt_texts
from .pooling import POOLINGS, PoolingFn, Span, pool_last, pool_mean, pool_spans, register_pooling
from .sharing import sharing_routes, supports_prompt_cache
from .templates import (
    PLAIN_ROLES,
    TemplateError,
    check_max_length,
    question_items,
    render,
    render_prompt,
    template_kind,
    template_tokens,
    tokenize_items,
    truncate_left,
)

__all__ = [
    "ANSWER_CUT_SHARE",
    "BLOCK_NAMES",
    "DEFAULT_ENCODER",
    "DEFAULT_MAX_LENGTH",
    "ENCODERS",
    "NORM_NAMES",
    "PACKED_MAX_ROW_TOKENS",
    "PLAIN_ROLES",
    "POOLINGS",
    "SHARING_METHODS",
    "TEMPLATES",
    "EncodeConfig",
    "Encoded",
    "Encoder",
    "EncoderCapabilities",
    "EncoderFactory",
    "GenerationConfig",
    "Item",
    "Message",
    "ModelIdentity",
    "PackedRow",
    "PoolingFn",
    "SharingMethod",
    "Span",
    "TemplateError",
    "TemplateKind",
    "TokenizedText",
    "TransformersEncoder",
    "as_encoder",
    "block_mask",
    "capture_hidden",
    "check_max_length",
    "encode",
    "encode_tokenized",
    "find_blocks",
    "find_final_norm",
    "generate",
    "load_encoder",
    "model_blocks",
    "model_lock",
    "pack_by_prefix",
    "packed_inputs",
    "padded_inputs",
    "plan_batches",
    "pool_last",
    "pool_mean",
    "pool_spans",
    "prompt_texts",
    "question_items",
    "register_encoder",
    "register_pooling",
    "render",
    "render_prompt",
    "resolve_layer",
    "row_length",
    "sharing_routes",
    "supports_packed_rows",
    "supports_prompt_cache",
    "template_kind",
    "template_tokens",
    "tokenize_items",
    "truncate_left",
]
