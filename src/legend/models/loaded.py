"""A loaded causal LM for inference (`LoadedModel`): loading one, wrapping one, and where its inputs go."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .embedded import DEFAULT_MODEL
from .fingerprint import fingerprint
from .loader import ensure_pad_token, load_pretrained
from .placement import CPU_QUANTIZATIONS, accelerate_hooks, quantize_int8


@dataclass
class LoadedModel:
    """A causal LM ready for inference, with what is needed to reproduce and to refuse a mismatch.

    Made by `load_model`, `wrap_model` or `ModelSpec.load`, never by hand.

    >>> from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    >>> from tokenizers import Tokenizer, models
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<eos>": 0}, "<eos>")))
    >>> tokenizer.eos_token = "<eos>"
    >>> tiny = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=4, n_positions=8))
    >>> lm = wrap_model(tiny, tokenizer, model_id="tiny")
    >>> lm.hidden_size, lm.num_layers, lm.device, lm.dtype_name, lm.fingerprint.startswith("sha256:")
    (8, 2, device(type='cpu'), 'float32', True)
    """

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # its tokenizer
    model_id: str  # what the user asked for, resolved ("HuggingFaceTB/SmolLM2-135M-Instruct", a path, ...)
    fingerprint: str  # hash of the config and a sample of the weights (dtype-independent)
    # Where the decoder blocks and the final norm live, for architectures the engine does not know
    # (dotted paths from the model, e.g. "model.layers" and "model.norm"); None: found by name.
    blocks_path: str | None = None
    norm_path: str | None = None
    quantization: str | None = None  # how the weights were quantised when loaded ("int8", "8bit", "4bit")

    @property
    def hidden_size(self) -> int:
        """The width of the hidden states."""
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """The number of decoder blocks."""
        return int(self.model.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's (execution) device, also for a dispatched model."""
        return input_device(self.model)

    @property
    def dtype_name(self) -> str:
        """The compute dtype as a short name ("float32", "bfloat16")."""
        dtype = getattr(self.model, "dtype", None) or next(self.model.parameters()).dtype
        name = str(dtype).replace("torch.", "")
        return f"{name}+{self.quantization}" if self.quantization else name


def input_device(model: Any) -> torch.device:
    """The device a model's inputs must be on.

    For a plain model that is where its weights are. For one dispatched by accelerate
    (`device_map`), the input embedding's execution device: its weights may be offloaded (meta
    tensors) and the first parameter may live on another GPU than the embedding.

    Args:
        model: a torch module (a transformers model, plain or dispatched).

    Returns:
        The device.

    >>> input_device(torch.nn.Linear(2, 2))
    device(type='cpu')
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is not None:
        for hook in accelerate_hooks(embedding):
            execution = getattr(hook, "execution_device", None)
            if execution is not None:
                return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
        weight = getattr(embedding, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
    for parameter in model.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


def load_model(
    spec: str | None = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | None = None,
    attn_implementation: str | None = None,
    quantization: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for inference.

    Args:
        spec: "default" (the embedded SmolLM2-135M-Instruct), a Hugging Face id or a local folder.
        dtype: a dtype name or a torch dtype.
        device: where the model goes (default: a GPU when visible).
        trust_remote_code: stays off unless asked for.
        device_map: see `load_pretrained`, like the other placement options.
        max_memory: per-device limits.
        offload_folder: where offloaded weights go.
        attn_implementation: "eager", "sdpa" or "flash_attention_2".
        quantization: "8bit" or "4bit" (bitsandbytes, CUDA), or "int8" (dynamic int8 Linear layers, CPU).

    Returns:
        The LoadedModel, fingerprinted (on the weights as stored, before any int8 quantisation).

    Raises:
        ModelError: one line naming the spec.

    >>> import tempfile
    >>> from legend.testing import tiny_model
    >>> folder = tempfile.mkdtemp()
    >>> tiny = tiny_model()
    >>> tiny.model.save_pretrained(folder); tiny.tokenizer.save_pretrained(folder)  # doctest: +ELLIPSIS
    (...)
    >>> lm = load_model(folder)
    >>> lm.fingerprint == tiny.fingerprint, lm.dtype_name
    (True, 'float32')
    """
    model, tokenizer, model_id = load_pretrained(
        spec,
        head="causal",
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload_folder,
        attn_implementation=attn_implementation,
        quantization=quantization,
    )
    identity = fingerprint(model)  # of the float weights: a direction built unquantised matches
    if quantization in CPU_QUANTIZATIONS:
        quantize_int8(model)
    return LoadedModel(
        model=model, tokenizer=tokenizer, model_id=model_id, fingerprint=identity, quantization=quantization
    )


def wrap_model(model: Any, tokenizer: Any, model_id: str | None = None) -> LoadedModel:
    """Wrap an already loaded transformers model (e.g. one built in a test or a notebook).

    Args:
        model: a causal LM (put in eval mode).
        tokenizer: its tokenizer (given a pad token when it has none).
        model_id: the id to record (default: the config's ``_name_or_path``, else the class name).

    Returns:
        The LoadedModel, fingerprinted.

    >>> from legend.testing import build_tiny_llama, build_tokenizer
    >>> tokenizer = build_tokenizer()
    >>> lm = wrap_model(build_tiny_llama(len(tokenizer)), tokenizer, model_id="mine")
    >>> lm.model_id, lm.num_layers, lm.fingerprint.startswith("sha256:")
    ('mine', 4, True)
    """
    ensure_pad_token(tokenizer)
    model.eval()
    name = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=name, fingerprint=fingerprint(model))
