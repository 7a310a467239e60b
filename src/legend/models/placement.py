"""Where a model's weights go: dtypes, devices, accelerate device maps and memory limits, quantization.

Every option is checked here before anything is loaded, so a device torch cannot use or a malformed
map is one line naming the option, not a traceback at load time.
"""

from __future__ import annotations

import importlib.util
import json
import re
from typing import Any

import torch

from ..errors import ModelError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
"""The dtype names the options accept."""

DEVICE_MAP_PRESETS = ("auto", "balanced", "balanced_low_0", "sequential")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
# "8bit"/"4bit": bitsandbytes on a CUDA GPU; "int8": PyTorch dynamic int8 quantisation of the Linear layers, the
# CPU fast path (weights int8, activations quantised per batch; see docs/speed.md for its measured fidelity).
QUANTIZATIONS = ("8bit", "4bit", "int8")
CPU_QUANTIZATIONS = ("int8",)
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B)?\s*$", re.IGNORECASE)


def default_device() -> str:
    """The device a model goes to when none is given.

    Returns:
        "cuda" when a GPU is visible, else "cpu".
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


def accelerate_hooks(module: Any) -> list[Any]:
    """accelerate's hooks on a module (a SequentialHook holds several).

    Args:
        module: a torch module, dispatched by accelerate or not.

    Returns:
        The hooks, or [] for a module accelerate did not touch.

    >>> accelerate_hooks(torch.nn.Linear(2, 2))
    []
    """
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def parse_device_map(value: str | dict | None) -> str | dict[str, Any] | None:
    """A device map: an accelerate preset ("auto", "balanced", ...) or an explicit module -> device map.

    Args:
        value: a preset, a dict, or its JSON text, e.g. '{"model.embed_tokens": 0, "model.layers.0": 0,
            ..., "model.norm": "disk"}'; devices are GPU numbers, "cpu", "disk" or torch device strings.

    Returns:
        The preset or the map (None stays None).

    Raises:
        ValueError: one line naming --device-map.

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
    """Refuse, before anything is loaded, a device torch cannot use here.

    Args:
        device: a torch device string, a GPU number, "disk" or None (nothing to check).
        option: the option that named it, for the error.

    Raises:
        ValueError: one line naming the option.

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
    """Per-device memory limits for accelerate.

    Args:
        value: "0=70GiB,1=70GiB,cpu=200GiB", a dict, or None.

    Returns:
        device -> size (GPU numbers as ints), or None.

    Raises:
        ValueError: one line naming --max-memory.

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


def placement_options(
    spec: str | None,
    device: str | None,
    device_map: str | dict | None,
    max_memory: str | dict | None,
    offload_folder: str | None,
    quantization: str | None,
    torch_dtype: torch.dtype,
) -> dict[str, Any]:
    """from_pretrained's device_map / max_memory / offload_folder / quantization_config, checked first.

    Args:
        spec: the model asked for, named in errors.
        device: where a non-dispatched model goes (excludes ``device_map``).
        device_map: an accelerate preset or a module -> device map.
        max_memory: per-device limits (needs ``device_map``).
        offload_folder: where offloaded weights go (needs ``device_map``).
        quantization: "8bit", "4bit" (bitsandbytes, CUDA only) or None.
        torch_dtype: the compute dtype (a 4-bit model computes in bf16 unless a half dtype is given).

    Returns:
        The keyword arguments to add to ``from_pretrained`` (none for a plain load).

    Raises:
        ValueError: conflicting options; ModelError: a package or a GPU the options need is missing.

    >>> placement_options("m", None, None, None, None, None, torch.float32)
    {}
    """
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
    if quantization in CPU_QUANTIZATIONS:
        if device_map is not None or (device is not None and not str(device).startswith("cpu")):
            raise ValueError(f"--quantization {quantization} runs on the CPU: drop --device/--device-map or use cpu")
        if torch_dtype != torch.float32:
            raise ValueError(f"--quantization {quantization} quantises float32 weights: use --dtype float32")
        return options  # applied after loading (quantize_int8), once the weights are fingerprinted
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


def quantize_int8(model: Any) -> Any:
    """Replace the model's Linear layers by dynamically quantised int8 ones (CPU), in place; returns the model.

    Weights become int8 (one scale per tensor, torch's default dynamic qconfig), activations are quantised
    per batch on the fly; the embeddings and norms stay float32. On this project's AVX2 CPU a whole annotation
    ran 1.40x faster, with margins at Spearman 0.79 (a middle layer) and 0.28 (the last layer) to float32's
    (docs/speed.md). One scale per output channel was tried: Spearman 0.82 / 0.26 and slower (the activations'
    outlier channels, quantised per tensor, are what costs the fidelity), so the default is kept.
    """
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization's own deprecation notice: the API still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
