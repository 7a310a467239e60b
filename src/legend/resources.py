"""Paths of the sample data bundled with the package (see samples/PROVENANCE.md)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

HH_RLHF_SAMPLE = "hh_rlhf_harmless_dev.jsonl.gz"
ADVBENCH = "advbench.csv"
XSTEST_PAIRS = "xstest_contrast_pairs.jsonl"
REFUSAL_BANK = "refusal_bank.json"  # written for legend: provenance inside the file


def sample_path(name: str) -> Path:
    """Absolute path of a bundled sample file, e.g. sample_path(ADVBENCH)."""
    path = Path(str(files("legend") / "samples" / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled sample missing (reinstall legend)")
    return path
