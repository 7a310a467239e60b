"""Resolve a model spec ("default", a Hugging Face id, a local path) and load it for inference.

Only torch is imported here (transformers on first load, `datasets` never), so `legend.encoding`
stays light. One module per mechanism:

* `placement`   dtypes, devices, accelerate device maps and memory limits, quantization options;
* `embedded`    the embedded default model (SmolLM2-135M-Instruct as GGUF, converted once) and spec resolution;
* `fingerprint` a dtype- and placement-independent hash of a model's weights;
* `loader`      `load_pretrained` / `load_tokenizer`, the pad-token policy, one-line load errors;
* `loaded`      `LoadedModel`, `load_model`, `wrap_model`, `input_device`;
* `spec`        `ModelSpec` (what to load, checked before any data is read) and `as_loaded`.

>>> ModelSpec("org/name").name
'org/name'
"""

from __future__ import annotations

from ..errors import ModelError
from .embedded import (
    CACHE_ENV,
    DEFAULT_MODEL,
    EMBEDDED_MODEL_ID,
    cache_dir,
    embedded_gguf_path,
    embedded_model_dir,
    model_source,
    resolve_model_path,
)
from .fingerprint import fingerprint, tokenizer_fingerprint
from .loaded import LoadedModel, input_device, load_model, wrap_model
from .loader import HEADS, ensure_pad_token, load_pretrained, load_tokenizer
from .placement import (
    ATTN_IMPLEMENTATIONS,
    DEVICE_MAP_PRESETS,
    DTYPES,
    QUANTIZATIONS,
    accelerate_hooks,
    check_device,
    default_device,
    parse_device_map,
    parse_max_memory,
    placement_options,
)
from .spec import ModelSpec, as_loaded

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "DEVICE_MAP_PRESETS",
    "DTYPES",
    "EMBEDDED_MODEL_ID",
    "HEADS",
    "QUANTIZATIONS",
    "LoadedModel",
    "ModelError",
    "ModelSpec",
    "accelerate_hooks",
    "as_loaded",
    "cache_dir",
    "check_device",
    "default_device",
    "embedded_gguf_path",
    "embedded_model_dir",
    "ensure_pad_token",
    "fingerprint",
    "input_device",
    "load_model",
    "load_pretrained",
    "load_tokenizer",
    "model_source",
    "parse_device_map",
    "parse_max_memory",
    "placement_options",
    "resolve_model_path",
    "tokenizer_fingerprint",
    "wrap_model",
]
