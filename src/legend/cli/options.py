"""Options shared by several commands, declared once so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Model = Annotated[
    Optional[str],
    typer.Option(
        "--model", "-m", help="Hugging Face id, local path, or 'default' (the embedded SmolLM2-135M-Instruct)."
    ),
]
Dtype = Annotated[str, typer.Option(help="float32 | bfloat16 | float16 (bf16 is ~2x faster on CPU).")]
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
