"""Audit preference labels: flag pairs whose margin says the rejected answer is clearly the safer one.

Score: how many robust standard deviations the margin lies below zero,
    audit_score = −margin_raw / (1.4826 · MAD(margin_raw))
(MAD around the median; 1.4826 makes it an SD for normal data). Positive scores speak against the
label, negative ones for it. A pair is flagged when BOTH
    audit_score ≥ min_score (default 1.0)   and   margin_raw ≤ the `quantile` of all margins (default 0.10).

Why this generalises: margins have no natural unit (they depend on the model, layer and pooling), so
the score is measured in the spread of the margins themselves; median and MAD are barely moved by
the mislabelled pairs (up to half the rows could be wrong before they break down), unlike mean/SD.
"Clearly safer" means more than one typical pair-to-pair spread below zero. The quantile cap bounds
the share flagged, so a weak direction (many small negative margins) cannot flood the user with
flags; raise it if you expect more than ~10% label noise. Both are options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np
from scipy.stats import median_abs_deviation
from sklearn.metrics import average_precision_score, precision_score, recall_score

AUDIT_COLUMNS = ("audit_flag", "audit_score")


@dataclass(frozen=True)
class AuditSettings:
    """Flag rule: score ≥ min_score AND margin at or below the `quantile` of all margins."""

    quantile: float = 0.10
    min_score: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"audit quantile must be in (0, 1], got {self.quantile}")


@dataclass
class AuditResult:
    flags: np.ndarray  # bool per pair
    scores: np.ndarray  # robust SDs below zero per pair
    scale: float  # the robust SD used (1.4826 · MAD)
    threshold: float  # margins at or below this are flagged
    settings: AuditSettings

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": int(self.flags.size),
            "flagged": int(self.flags.sum()),
            "share_flagged": float(self.flags.mean()) if self.flags.size else 0.0,
            "robust_sd": self.scale,
            "margin_threshold": self.threshold,
            **asdict(self.settings),
        }


def robust_scale(raw: np.ndarray) -> float:
    """1.4826 · MAD of the margins; the SD if more than half are identical (MAD 0); 1.0 if all are."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size == 0:
        return 1.0
    scale = float(median_abs_deviation(raw, scale="normal"))
    if scale == 0.0:
        scale = float(raw.std())
    return scale if scale > 0 else 1.0


def audit_margins(raw: np.ndarray, settings: AuditSettings = AuditSettings()) -> AuditResult:
    """Score and flag every pair (see the module docstring for the rule)."""
    raw = np.asarray(raw, dtype=np.float64)
    scale = robust_scale(raw)
    scores = -raw / scale
    if raw.size == 0:
        return AuditResult(np.zeros(0, dtype=bool), scores, scale, float("nan"), settings)
    threshold = min(float(np.quantile(raw, settings.quantile)), -settings.min_score * scale)
    return AuditResult(flags=raw <= threshold, scores=scores, scale=scale, threshold=threshold, settings=settings)


def add_audit_columns(dataset: datasets.Dataset, result: AuditResult) -> datasets.Dataset:
    """The same rows, in the same order, with `audit_flag` and `audit_score` (replacing earlier ones)."""
    if len(dataset) != result.flags.size:
        raise ValueError(f"{len(dataset)} rows but {result.flags.size} audit results")
    table = dataset.remove_columns([c for c in AUDIT_COLUMNS if c in dataset.column_names])
    return table.add_column("audit_flag", result.flags.tolist()).add_column("audit_score", result.scores.tolist())


def flip_labels(raw: np.ndarray, rate: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Swap chosen/rejected of a seeded random `rate` share of pairs: their margins change sign.

    Margins are antisymmetric ((e_c − e_r)·d), so negating is what re-annotating the swapped pair
    gives (up to batch-order floating-point noise). Returns (flipped margins, bool mask of flipped rows).
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"flip rate must be between 0 and 1, got {rate}")
    raw = np.asarray(raw, dtype=np.float64)
    n_flip = int(round(rate * raw.size))
    mask = np.zeros(raw.size, dtype=bool)
    mask[np.random.default_rng(seed).choice(raw.size, size=n_flip, replace=False)] = True
    return np.where(mask, -raw, raw), mask


def simulate_flips(
    raw: np.ndarray, rate: float = 0.1, seed: int = 0, settings: AuditSettings = AuditSettings()
) -> dict[str, Any]:
    """Flip a known `rate` of labels, audit, and score the flags against the flipped rows.

    Reports precision and recall of the flags, the base rate (precision of flagging at random),
    and the average precision of `audit_score` as a ranking (threshold-free). Pairs that were
    already mislabelled in the original data count as false positives here, so precision is a
    lower bound when the original labels are noisy.
    """
    flipped_raw, truth = flip_labels(raw, rate, seed)
    result = audit_margins(flipped_raw, settings)
    flagged = result.flags
    return {
        "pairs": int(truth.size),
        "flip_rate": rate,
        "seed": seed,
        "flipped": int(truth.sum()),
        "flagged": int(flagged.sum()),
        "precision": float(precision_score(truth, flagged, zero_division=0.0)),
        "recall": float(recall_score(truth, flagged, zero_division=0.0)),
        "base_rate": float(truth.mean()),
        "average_precision": float(average_precision_score(truth, result.scores)) if truth.any() else None,
        "audit": result.summary(),
    }
