"""The one loader of transformers models and tokenizers, with the one pad-token policy and one-line load errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from .embedded import DEFAULT_MODEL, resolve_model_path
from .placement import ATTN_IMPLEMENTATIONS, DTYPES, check_device, default_device, placement_options

HEADS = ("causal", "reward")
"""The model heads `load_pretrained` loads: a causal LM, or a sequence-classification (reward) head."""


def ensure_pad_token(tokenizer: Any, *, reward_head: bool = False) -> Any:
    """The one pad-token policy. Padded positions are always masked; what differs is where a head reads.

    A causal LM (annotation, generation, DPO) reads hidden states at positions legend chooses, so any
    pad works: a tokenizer without one gets its eos. A sequence-classification (reward) head reads the
    last non-pad token, so there pad must differ from the end-of-turn token (SmolLM2 and many chat
    models ship pad == eos, which would make the final `<|im_end|>` count as padding): unk or bos is
    taken instead, eos only when there is nothing else.

    Args:
        tokenizer: a transformers tokenizer (changed in place).
        reward_head: the tokenizer feeds a reward (sequence-classification) head.

    Returns:
        The tokenizer.

    >>> from types import SimpleNamespace
    >>> tok = SimpleNamespace(pad_token="<eos>", pad_token_id=2, eos_token="<eos>", unk_token=None, bos_token="<s>")
    >>> ensure_pad_token(tok, reward_head=True).pad_token
    '<s>'
    """
    if reward_head and (tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token):
        for candidate in (tokenizer.unk_token, tokenizer.bos_token):
            if candidate is not None and candidate != tokenizer.eos_token:
                tokenizer.pad_token = candidate
                return tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def load_tokenizer(
    spec: str | None = DEFAULT_MODEL, *, reward_head: bool = False, trust_remote_code: bool = False
) -> Any:
    """Only the tokenizer of a model (no weights), with the pad-token policy of `ensure_pad_token`.

    Args:
        spec: "default", a Hugging Face id or a local folder.
        reward_head: apply the reward-head pad policy.
        trust_remote_code: allow the checkpoint's own tokenizer code.

    Returns:
        The tokenizer.

    Raises:
        ModelError: one line naming the spec.
    """
    from transformers import AutoTokenizer

    path, _ = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelError(f"model {spec!r}: its tokenizer could not be loaded ({str(err).splitlines()[0]})") from err
    return ensure_pad_token(tokenizer, reward_head=reward_head)


def load_pretrained(
    spec: str | None = DEFAULT_MODEL,
    *,
    head: str = "causal",
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
    num_labels: int | None = None,
    place: bool = True,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | None = None,
    attn_implementation: str | None = None,
    quantization: str | None = None,
) -> tuple[Any, Any, str]:
    """The one loader of transformers models.

    Big models: ``device_map`` lets accelerate spread the blocks over GPUs, CPU memory and disk
    (``offload_folder``) within ``max_memory``; such a model is not moved afterwards (inputs go to
    `input_device`). ``quantization`` loads the weights through bitsandbytes (needs CUDA and the
    `bitsandbytes` package; placed on ``device`` or GPU 0 unless a device map is given).

    Args:
        spec: "default" (the embedded model), a Hugging Face id or a local folder.
        head: "causal" (AutoModelForCausalLM) or "reward" (AutoModelForSequenceClassification).
        dtype: a name of `DTYPES` or a torch dtype.
        device: where the model goes (default: a GPU when visible); excludes ``device_map``.
        trust_remote_code: allow the checkpoint's own code.
        num_labels: a reward head's outputs (None: the checkpoint's own head).
        place: move the model to ``device`` and put it in eval mode.
        device_map: "auto", "balanced", "sequential" or an explicit module -> device map.
        max_memory: per-device limits, e.g. "0=70GiB,cpu=200GiB".
        offload_folder: where accelerate puts offloaded weights.
        attn_implementation: "eager", "sdpa" or "flash_attention_2".
        quantization: "8bit" or "4bit".

    Returns:
        (model, tokenizer, model id to record). A reward model's config learns its pad id.

    Raises:
        ModelError: one line naming the spec (and the folder's file where it is known);
        ValueError: conflicting or unknown options.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if head not in HEADS:
        raise ValueError(f"unknown model head {head!r}; choose from {', '.join(HEADS)}")
    check_device(device)
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar says nothing useful here
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    path, model_id = resolve_model_path(spec)
    kind = "model" if head == "causal" else "reward model"
    options: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if num_labels is not None:
        options["num_labels"] = num_labels
    options.update(placement_options(spec, device, device_map, max_memory, offload_folder, quantization, torch_dtype))
    if attn_implementation is not None:
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attn_implementation {attn_implementation!r}; choose from {', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ModelError(f"model {spec!r}: --attn-implementation flash_attention_2 needs the flash-attn package")
        options["attn_implementation"] = attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto: Any = AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification
        model = auto.from_pretrained(path, **options)
    except Exception as err:  # a user's folder: damaged weights, a pickle, a bad config.json ... one line each
        if isinstance(err, (MemoryError, KeyboardInterrupt)) or type(err).__name__ == "OutOfMemoryError":
            raise
        raise ModelError(f"{kind} {spec!r}: could not be loaded ({_explain_load_error(err, path)})") from err
    ensure_pad_token(tokenizer, reward_head=head == "reward")
    if head == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    if "device_map" in options:
        model.eval()  # placed by accelerate (or bitsandbytes); moving it would undo the map
    elif place:
        model.to(device or default_device()).eval()
    return model, tokenizer, model_id


def _explain_load_error(err: BaseException, path: str) -> str:
    """The useful first line of a loading failure, naming the folder's file where it is known."""
    import pickle

    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path  # a Hub id is user/name
    if local and not Path(path).expanduser().exists():
        return f"{path}: no such model folder (and not a Hub id user/name)"
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err).lower():
        return (
            f"{path}: its weights are a pickle (pytorch_model.bin) holding more than tensors; legend never "
            "unpickles arbitrary objects: convert the checkpoint to safetensors"
        )
    if type(err).__name__ == "SafetensorError":
        return f"{path}: a .safetensors weights file is damaged or truncated ({first})"
    if Path(path).is_dir() and ("config" in first.lower() or type(err).__name__.startswith("StrictDataclass")):
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
        return f"{Path(path) / 'config.json'}: invalid model config ({detail})"
    return f"{type(err).__name__}: {first}" if not isinstance(err, OSError) else first
