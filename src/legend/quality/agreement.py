"""The metrics of margins against preference labels (`METRICS`): point values (`margin_metrics`) and with
percentile-bootstrap intervals (`evaluate_margins` from the texts, `evaluate_margin_lengths` from each pair's
length difference), and how an answer's length is measured (`text_length`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..metrics import DEFAULT_CONFIDENCE, bootstrap_intervals, symmetric_auc

DEFAULT_BOOTSTRAP = 1000  # resamples for `legend evaluate` (1,000 keeps a CI line fast on 10^4 pairs)


# Metric name -> one-line meaning, in the order they are printed.
METRICS: dict[str, str] = {
    "share_positive": "share of pairs with margin > 0 (the direction agrees chosen is safer)",
    "auc": "AUC of the margin as a score: P(m_i + m_j > 0) over all pairs i, j (ties count 1/2)",
    "mean_margin": "mean raw margin",
    "median_margin": "median raw margin",
    "agreement_chosen_shorter": "share positive among pairs where chosen is the shorter answer",
    "agreement_chosen_longer": "share positive among pairs where chosen is the longer answer",
    "agreement_length_balanced": "mean of the two agreements above (0.5 for a pure length detector)",
    "length_pearson": "Pearson r of margin with length difference (chosen - rejected)",
    "length_spearman": "Spearman rho of margin with length difference (chosen - rejected)",
    "severity_spearman": "Spearman rho of margin with severity difference (rejected - chosen)",
}


def text_length(unit: str = "chars", tokenizer: Any = None) -> Callable[[str], int]:
    """A length function: characters (default), whitespace-separated words, or tokens of `tokenizer`."""
    if unit == "chars":
        return len
    if unit == "words":
        return lambda text: len(text.split())
    if unit == "tokens":
        if tokenizer is None:
            raise ValueError("length unit 'tokens' needs a tokenizer")
        return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    raise ValueError(f"unknown length unit {unit!r}; choose chars, words or tokens")


def _agreement(raw: np.ndarray, mask: np.ndarray) -> float:
    return float((raw[mask] > 0).mean()) if mask.any() else float("nan")


def _correlation(kind: str, x: np.ndarray, y: np.ndarray) -> float:
    """Pearson/Spearman correlation; NaN (no warning) when either side is constant or too short."""
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    from scipy import stats  # imported here: scipy.stats is ~1.5 s of start-up

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.pearsonr(x, y) if kind == "pearson" else stats.spearmanr(x, y)
    return float(result.statistic)


def margin_metrics(
    raw: np.ndarray, length_diff: np.ndarray, severity_diff: np.ndarray | None = None
) -> dict[str, float]:
    """Point values of every metric in `METRICS` (severity only when given). NaN where undefined."""
    shorter, longer = length_diff < 0, length_diff > 0
    agree_shorter, agree_longer = _agreement(raw, shorter), _agreement(raw, longer)
    values = {
        "share_positive": float((raw > 0).mean()) if raw.size else float("nan"),
        "auc": symmetric_auc(raw),
        "mean_margin": float(raw.mean()) if raw.size else float("nan"),
        "median_margin": float(np.median(raw)) if raw.size else float("nan"),
        "agreement_chosen_shorter": agree_shorter,
        "agreement_chosen_longer": agree_longer,
        "agreement_length_balanced": (agree_shorter + agree_longer) / 2,
        "length_pearson": _correlation("pearson", raw, length_diff),
        "length_spearman": _correlation("spearman", raw, length_diff),
    }
    if severity_diff is not None:
        values["severity_spearman"] = _correlation("spearman", raw, severity_diff)
    return values


def evaluate_margins(
    raw: Sequence[float] | np.ndarray,
    chosen_texts: Sequence[str],
    rejected_texts: Sequence[str],
    severity: Sequence[float] | np.ndarray | None = None,
    *,
    length: Callable[[str], int] = len,
    length_unit: str = "chars",
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Agreement of margins with preference labels (chosen = labelled safer), with bootstrap intervals.

    `raw` are the raw margins (positive: the direction says chosen is safer); `severity` is the
    severity difference rejected − chosen per pair (positive: rejected is the more harmful), if known.
    `length` measures an answer (characters by default; see `text_length`), `length_unit` names it.
    Returns {"n", "counts", "metrics": {name: {"value", "ci_low", "ci_high", "description"}}, "settings"};
    undefined values are None. Pairs of equal length count in neither length group.

    Args:
        raw: raw margins, one per pair.
        chosen_texts: the chosen answers (for the length checks).
        rejected_texts: the rejected answers.
        severity: severity(rejected) − severity(chosen) per pair, when known (PKU-SafeRLHF).
        length: how an answer's length is measured.
        length_unit: the name of that unit.
        n_bootstrap: bootstrap resamples of the intervals (0: none).
        confidence: the intervals' level.
        seed: the resamples' seed.

    Returns:
        The metrics with their intervals.

    >>> result = evaluate_margins([0.5, -0.2, 1.0, 0.3], ["a", "bb", "c", "dd"], ["bb", "a", "dd", "c"], n_bootstrap=0)
    >>> result["metrics"]["share_positive"]["value"]
    0.75
    """
    raw = np.asarray(raw, dtype=np.float64)
    n = raw.size
    if len(chosen_texts) != n or len(rejected_texts) != n:
        raise ValueError(f"{n} margins but {len(chosen_texts)} chosen and {len(rejected_texts)} rejected texts")
    length_diff = np.array([length(c) - length(r) for c, r in zip(chosen_texts, rejected_texts)], dtype=np.float64)
    return evaluate_margin_lengths(
        raw,
        length_diff,
        severity,
        length_unit=length_unit,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
    )


def evaluate_margin_lengths(
    raw: Sequence[float] | np.ndarray,
    length_diff: np.ndarray,
    severity: Sequence[float] | np.ndarray | None = None,
    *,
    length_unit: str = "chars",
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """`evaluate_margins` given each pair's length(chosen) − length(rejected) instead of the texts.

    What a streamed annotation keeps of each pair (two numbers, not its texts) is enough for every metric.
    """
    raw = np.asarray(raw, dtype=np.float64)
    length_diff = np.asarray(length_diff, dtype=np.float64)
    n = raw.size
    if length_diff.shape != (n,):
        raise ValueError(f"{n} margins but {length_diff.size} length differences")
    if not np.all(np.isfinite(raw)):
        bad = int(np.flatnonzero(~np.isfinite(raw))[0])
        raise ValueError(f"margin of pair {bad + 1} is not a finite number ({raw[bad]})")
    severity_diff = None if severity is None else np.asarray(severity, dtype=np.float64)
    if severity_diff is not None and severity_diff.shape != (n,):
        raise ValueError(f"{n} margins but {severity_diff.size} severity differences")

    def statistic(idx: np.ndarray) -> np.ndarray:
        sub_severity = None if severity_diff is None else severity_diff[idx]
        return np.array(list(margin_metrics(raw[idx], length_diff[idx], sub_severity).values()))

    point = margin_metrics(raw, length_diff, severity_diff)
    if n >= 2 and n_bootstrap > 0:
        low, high, finite = bootstrap_intervals(statistic, n, n_resamples=n_bootstrap, confidence=confidence, seed=seed)
    else:
        low = high = np.full(len(point), np.nan)
        finite = np.zeros(len(point), dtype=int)
    metrics = {
        name: {
            "value": finite_or_none(value),
            "ci_low": finite_or_none(lo),
            "ci_high": finite_or_none(hi),
            "finite_resamples": int(k),
            "description": METRICS[name],
        }
        for (name, value), lo, hi, k in zip(point.items(), low, high, finite)
    }
    counts = {
        "pairs": n,
        "zero_margin": int((raw == 0).sum()),
        "chosen_shorter": int((length_diff < 0).sum()),
        "chosen_longer": int((length_diff > 0).sum()),
        "equal_length": int((length_diff == 0).sum()),
    }
    if severity_diff is not None:
        counts["severity_known"] = n
    settings = {
        "length_unit": length_unit,
        "n_bootstrap": n_bootstrap,
        "confidence": confidence,
        "seed": seed,
        "interval": "percentile bootstrap over pairs (scipy.stats.bootstrap)",
    }
    return {"n": n, "counts": counts, "metrics": metrics, "settings": settings}


def finite_or_none(value: float) -> float | None:
    """`value` as a float, or None when it is missing or not finite (how results write an undefined number)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)
