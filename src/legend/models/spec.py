"""What model to load, decided and checked at the edge (`ModelSpec`); loading waits until the input is checked."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from .embedded import DEFAULT_MODEL
from .loaded import LoadedModel, load_model
from .placement import ATTN_IMPLEMENTATIONS, DTYPES, QUANTIZATIONS, check_device, parse_device_map, parse_max_memory


@dataclass(frozen=True)
class ModelSpec:
    """What to load, validated here; `load` loads it.

    `device_map` (an accelerate preset such as "auto", or an explicit module -> device map as JSON
    text) spreads a big model over GPUs, CPU memory and disk (`offload_folder`), within
    `max_memory` ("0=70GiB,cpu=200GiB"). `quantization` "8bit"/"4bit" loads the weights through
    bitsandbytes (CUDA only); "int8" quantises the Linear layers dynamically on the CPU (after the
    fingerprint is taken, so a direction built in float32 still matches).
    `blocks_path`/`norm_path` name the decoder blocks and the final norm
    of an architecture the engine does not find by itself.

    >>> ModelSpec("org/name", dtype="bf16").load_options()["dtype"]
    'bf16'
    >>> ModelSpec("org/name", max_memory="0=10GiB")
    Traceback (most recent call last):
    ...
    ValueError: --max-memory and --offload-folder need --device-map (e.g. --device-map auto)
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
        """The keyword arguments of `load_pretrained` / `load_model` that this spec sets.

        Returns:
            dtype, device, trust_remote_code and the placement options.
        """
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
        """Load the model this spec names.

        Returns:
            The LoadedModel, with the spec's blocks/norm paths.
        """
        lm = load_model(self.name, **self.load_options())
        lm.blocks_path, lm.norm_path = self.blocks_path, self.norm_path
        return lm


def as_loaded(model: LoadedModel | ModelSpec | str | None, fallback: str | None = DEFAULT_MODEL) -> LoadedModel:
    """Accept a loaded model, a spec, a name or None, and return a loaded model.

    Args:
        model: a LoadedModel (returned as is), a ModelSpec (loaded), a name (loaded) or None.
        fallback: the name used when ``model`` (or the spec's name) is None, e.g. a direction's model.

    Returns:
        The LoadedModel.

    >>> from types import SimpleNamespace
    >>> lm = LoadedModel(model=SimpleNamespace(), tokenizer=None, model_id="tiny", fingerprint="sha256:0")
    >>> as_loaded(lm) is lm
    True
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, ModelSpec):
        return model.load() if model.name is not None else dataclasses.replace(model, name=fallback).load()
    return load_model(model or fallback)
