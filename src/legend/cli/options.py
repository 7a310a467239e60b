"""Options shared by several commands, declared once so every command spells them the same way."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

Model = Annotated[
    Optional[str],
    typer.Option(
        "--model", "-m", help="Hugging Face id, local path, or 'default' (the embedded SmolLM2-135M-Instruct)."
    ),
]
Dtype = Annotated[
    str, typer.Option(help="float32 | bfloat16 | float16 (bf16 pays off on GPUs and CPUs with AVX512-BF16/AMX only).")
]
Device = Annotated[Optional[str], typer.Option(help="torch device; default: cuda when available, else cpu.")]
TrustRemoteCode = Annotated[bool, typer.Option(help="Allow model code from the Hub (off unless asked).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Most texts in one forward pass.")]
MaxBatchTokens = Annotated[int, typer.Option(min=1, help="Most padded tokens in one forward pass.")]
MaxLength = Annotated[
    int, typer.Option(min=2, help="Longer texts are truncated from the left (the answer's end is kept).")
]
Limit = Annotated[Optional[int], typer.Option(min=1, help="Use only the first N rows.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
OutFile = Annotated[
    Path,
    typer.Option("--out", "-o", help="Output file; the format follows the extension (.jsonl, .json, .parquet, .csv)."),
]


# ---------------------------------------------------------------- columns and settings-field help (h10b)
# The same three column options in every command that reads preference pairs, and option help taken
# from a settings dataclass's field metadata so a command does not restate what its settings document.


def field_help(cls: type, name: str) -> str:
    """The `metadata["help"]` of dataclass field `name` of `cls` (a KeyError names a missing one)."""
    from dataclasses import fields

    for item in fields(cls):
        if item.name == name:
            return str(item.metadata["help"])
    raise KeyError(f"{cls.__name__} has no field {name!r}")


PromptColumn = Annotated[Optional[str], typer.Option(help="Prompt column (auto-detected by default).")]
ChosenColumn = Annotated[Optional[str], typer.Option(help="Chosen column (auto-detected by default).")]
RejectedColumn = Annotated[Optional[str], typer.Option(help="Rejected column (auto-detected by default).")]
LegacyColumns = Annotated[
    Optional[str],
    typer.Option("--columns", hidden=True, help="Deprecated: use --prompt-column/--chosen-column/--rejected-column."),
]


def column_names(
    prompt: Optional[str] = None,
    chosen: Optional[str] = None,
    rejected: Optional[str] = None,
    legacy: Optional[str] = None,
) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """The three column options, or the deprecated `--columns p,c,r` (which may not be mixed with them)."""
    if not legacy:
        return prompt, chosen, rejected
    if prompt or chosen or rejected:
        raise ValueError("--columns: give either --columns or --prompt-column/--chosen-column/--rejected-column")
    parts = [p.strip() or None for p in legacy.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--columns: expected prompt,chosen,rejected, got {legacy!r}")
    return parts[0], parts[1], parts[2]


# Big annotators (7B-70B): placement over GPUs/CPU/disk, attention kernel, quantisation, block discovery.
DeviceMap = Annotated[
    Optional[str],
    typer.Option(
        help="Spread the model with accelerate: auto | balanced | sequential, or a JSON object of module -> "
        "device (GPU number, cpu, disk). Excludes --device."
    ),
]
MaxMemory = Annotated[
    Optional[str], typer.Option(help="With --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB.")
]
OffloadFolder = Annotated[Optional[str], typer.Option(help="With --device-map: folder for weights offloaded to disk.")]
AttnImplementation = Annotated[
    Optional[str], typer.Option(help="Attention kernel: sdpa | eager | flash_attention_2 (default: the model's).")
]
Quantization = Annotated[
    Optional[str],
    typer.Option(
        help="8bit | 4bit (bitsandbytes, CUDA GPU) | int8 (CPU: dynamic int8 Linear layers, ~1.4x faster "
        "annotation; fidelity vs float32 measured in docs/speed.md)."
    ),
]
BlocksPath = Annotated[
    Optional[str],
    typer.Option(help="Dotted path to the decoder blocks when legend does not find them (e.g. model.layers)."),
]
NormPath = Annotated[
    Optional[str], typer.Option(help="Dotted path to the final norm when legend does not find it (e.g. model.norm).")
]


# ---------------------------------------------------------------- the model options, declared once

# (parameter, annotation, default) of every option that says what model to load and how; a command
# decorated with `model_options` receives them as one `spec: ModelSpec`.
MODEL_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("dtype", Dtype, "float32"),
    ("device", Device, None),
    ("trust_remote_code", TrustRemoteCode, False),
    ("device_map", DeviceMap, None),
    ("max_memory", MaxMemory, None),
    ("offload_folder", OffloadFolder, None),
    ("attn_implementation", AttnImplementation, None),
    ("quantization", Quantization, None),
    ("blocks_path", BlocksPath, None),
    ("norm_path", NormPath, None),
)
MODEL_FROM_DIRECTION = "Model to use; default: the one the direction was built with."


def model_options(default: Optional[str] = "default", help: Optional[str] = None) -> Callable[[F], F]:
    """Give a command `--model/-m` and every model-loading option, passed to it as one `spec: ModelSpec`.

    The options are declared once (`MODEL_OPTIONS`), so every command that loads a model spells and
    documents them the same way; the spec is validated (one line, exit 2) before anything is read.
    `default` is the model when `--model` is not given (None: the one the direction records).
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        if "spec" not in signature.parameters:
            raise TypeError(f"{func.__name__}: a command with model options takes a `spec` parameter")
        kept = [p for p in signature.parameters.values() if p.name != "spec"]
        model_help = help or (MODEL_FROM_DIRECTION if default is None else None)
        model_annotation = (
            Annotated[Optional[str], typer.Option("--model", "-m", help=model_help)] if model_help else Model
        )
        added = [inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=model_annotation)]
        added += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value, annotation=annotation)
            for name, annotation, value in MODEL_OPTIONS
        ]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            options = {name: kwargs.pop(name) for name, _, _ in MODEL_OPTIONS}
            name = kwargs.pop("model") or default
            return func(*args, spec=model_spec(name, **options), **kwargs)

        wrapper.__signature__ = signature.replace(parameters=kept + added)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def model_spec(
    model: Optional[str],
    dtype: str = "float32",
    device: Optional[str] = None,
    trust_remote_code: bool = False,
    device_map: Optional[str] = None,
    max_memory: Optional[str] = None,
    offload_folder: Optional[str] = None,
    attn_implementation: Optional[str] = None,
    quantization: Optional[str] = None,
    blocks_path: Optional[str] = None,
    norm_path: Optional[str] = None,
):
    """The ModelSpec of a command's model options (validated here; nothing is loaded yet)."""
    from legend.models import ModelSpec

    return ModelSpec(
        model,
        dtype=dtype,
        device=device,
        trust_remote_code=trust_remote_code,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload_folder,
        attn_implementation=attn_implementation,
        quantization=quantization,
        blocks_path=blocks_path,
        norm_path=norm_path,
    )
