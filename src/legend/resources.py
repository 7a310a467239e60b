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


def shown_path(path: str | Path) -> str:
    """How a data file is named in a card: a bundled sample by its place in the package, others as given.

    >>> shown_path(sample_path(XSTEST_PAIRS))
    'legend/samples/xstest_contrast_pairs.jsonl (bundled)'
    >>> shown_path("data/mine.jsonl")
    'data/mine.jsonl'
    """
    bundled = Path(str(files("legend") / "samples"))
    try:
        inside = Path(path).resolve().relative_to(bundled.resolve())
    except ValueError:
        return str(path)
    return f"legend/samples/{inside.as_posix()} (bundled)"
