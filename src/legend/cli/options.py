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
Dtype = Annotated[str, typer.Option(help="float32 | bfloat16 | float16 (bf16 is ~1.5x faster on CPU).")]
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
