"""How good are the margins? Agreement with preference labels, with bootstrap intervals.

On a labelled preference set the chosen answer is the labelled-safer one, so a good safety direction
gives mostly positive margins. `evaluate_margins` measures that agreement and checks the two ways a
direction can look better than it is:

* length: a direction that only measures answer length agrees with the labels whenever the safer
  answer happens to be the longer (or shorter) one. The length-balanced agreement averages the
  agreement over pairs where chosen is the shorter answer and pairs where it is the longer one, so a
  pure length detector scores 0.5 on it whatever the mix; the correlation of margins with the length
  difference says how much of the margin is length.
* severity: where the data grades harm (PKU-SafeRLHF `response_{0,1}_severity_level`), the margin
  should grow with the severity gap between the answers (Spearman correlation).

All numbers come with percentile-bootstrap 95% intervals: pairs are resampled with replacement
(scipy.stats.bootstrap over the pair indices, so every metric of one resample uses the same pairs).

And every agreement is shown against the null (`random_floor`): the same metrics for >= 200 seeded
random unit directions at the same layer and pooling over the same pairs. Their margins are
D @ R, D the pairs' embedding differences e(p+c) − e(p+r) (kept from the one encoding pass) and R
a (dim × n) Gaussian matrix with unit columns: one matmul. The floor is the random directions' 95th
percentile; the real direction's percentile among them says whether its agreement is more than
what any direction in that space would give (length, answer style and label skew included).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .annotation import AnnotateSettings, annotate
from .data import ColumnNames, DataError, PairView, read_margin_column, read_pairs
from .metrics import DEFAULT_CONFIDENCE, bootstrap_intervals, symmetric_auc

DEFAULT_BOOTSTRAP = 1000  # resamples for `legend evaluate` (1,000 keeps a CI line fast on 10^4 pairs)
DEFAULT_RANDOM_DIRECTIONS = 200  # random unit directions of the floor
FLOOR_QUANTILE = 0.95
# The metrics compared with the random floor (severity only where severity is known).
FLOOR_METRICS = ("share_positive", "agreement_length_balanced", "auc", "severity_spearman")

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
    if not np.all(np.isfinite(raw)):
        bad = int(np.flatnonzero(~np.isfinite(raw))[0])
        raise ValueError(f"margin of pair {bad + 1} is not a finite number ({raw[bad]})")
    length_diff = np.array([length(c) - length(r) for c, r in zip(chosen_texts, rejected_texts)], dtype=np.float64)
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
            "value": _number(value),
            "ci_low": _number(lo),
            "ci_high": _number(hi),
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


def random_unit_directions(dim: int, n: int = DEFAULT_RANDOM_DIRECTIONS, seed: int = 0) -> np.ndarray:
    """A (dim × n) float64 matrix of seeded Gaussian directions with unit columns.

    >>> r = random_unit_directions(5, 3, seed=1)
    >>> r.shape, bool(np.allclose(np.linalg.norm(r, axis=0), 1.0))
    ((5, 3), True)
    """
    if dim < 1 or n < 1:
        raise ValueError(f"need a positive dimension and number of directions, got {dim} and {n}")
    matrix = np.random.default_rng(seed).standard_normal((dim, n))
    return matrix / np.linalg.norm(matrix, axis=0, keepdims=True)


def random_floor(
    differences: np.ndarray,
    raw: Sequence[float] | np.ndarray,
    chosen_texts: Sequence[str],
    rejected_texts: Sequence[str],
    severity: Sequence[float] | np.ndarray | None = None,
    *,
    length: Callable[[str], int] = len,
    n_directions: int = DEFAULT_RANDOM_DIRECTIONS,
    seed: int = 0,
    quantile: float = FLOOR_QUANTILE,
) -> dict[str, Any]:
    """The real margins' metrics against those of `n_directions` random unit directions (the null).

    `differences` are the pairs' embedding differences (n_pairs × dim) at the direction's layer and
    pooling, `raw` the real direction's margins of the same pairs. For each metric in FLOOR_METRICS:
    the real value, the random directions' `quantile` (the floor), mean and max, and the percentile
    of the real value among the random ones (ties count half). Random margins are one matmul D @ R.

    Args:
        differences: e(prompt+chosen) − e(prompt+rejected) per pair [n_pairs, hidden].
        raw: the real direction's margins.
        chosen_texts: the chosen answers (for the length-balanced metric).
        rejected_texts: the rejected answers.
        severity: severity differences, when known.
        length: how an answer's length is measured.
        n_directions: random unit directions drawn (seeded).
        seed: their seed.
        quantile: the floor's quantile of the random values.

    Returns:
        {"n_directions", "quantile", "metrics": {name: {"value", "floor", "percentile", ...}}}.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> signal = rng.standard_normal(16)
    >>> diffs = rng.standard_normal((300, 16)) + signal  # every pair leans the same way
    >>> floor = random_floor(diffs, diffs @ signal, ["a"] * 300, ["a"] * 300, n_directions=50)
    >>> floor["metrics"]["share_positive"]["percentile"] > 95
    True
    """
    diffs = np.asarray(differences, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    if diffs.ndim != 2 or diffs.shape[0] != raw.size:
        raise ValueError(f"{raw.size} margins but embedding differences of shape {diffs.shape}")
    if len(chosen_texts) != raw.size or len(rejected_texts) != raw.size:
        raise ValueError(f"{raw.size} margins but {len(chosen_texts)} chosen and {len(rejected_texts)} rejected texts")
    length_diff = np.array([length(c) - length(r) for c, r in zip(chosen_texts, rejected_texts)], dtype=np.float64)
    severity_diff = None if severity is None else np.asarray(severity, dtype=np.float64)
    margins = diffs @ random_unit_directions(diffs.shape[1], n_directions, seed)
    names = [m for m in FLOOR_METRICS if m != "severity_spearman" or severity_diff is not None]
    real = margin_metrics(raw, length_diff, severity_diff)
    null = np.array(
        [[margin_metrics(margins[:, j], length_diff, severity_diff)[m] for m in names] for j in range(n_directions)]
    )
    metrics = {}
    for k, name in enumerate(names):
        values = null[:, k][np.isfinite(null[:, k])]
        value = real[name]
        defined = bool(values.size) and math.isfinite(value)
        metrics[name] = {
            "value": _number(value),
            "floor": _number(np.quantile(values, quantile)) if values.size else None,
            "random_mean": _number(values.mean()) if values.size else None,
            "random_max": _number(values.max()) if values.size else None,
            "percentile": (
                _number(100.0 * ((values < value).mean() + 0.5 * (values == value).mean())) if defined else None
            ),
        }
    return {
        "n_directions": n_directions,
        "seed": seed,
        "quantile": quantile,
        "dim": int(diffs.shape[1]),
        "n": int(raw.size),
        "metrics": metrics,
        "method": "seeded Gaussian unit directions at the same layer and pooling, same pairs (margins = D @ R)",
    }


def floor_line(floor: dict[str, Any], name: str = "share_positive") -> str:
    """One line: the real value, the random floor and the real value's percentile among random directions."""
    metric = floor["metrics"].get(name)
    if metric is None or metric["value"] is None or metric["floor"] is None:
        return f"{name}: n/a"
    pct = "n/a" if metric["percentile"] is None else f"{metric['percentile']:.1f}"
    verdict = "above" if metric["value"] > metric["floor"] else "NOT above"
    return (
        f"{name} {metric['value']:.3f} vs random floor {metric['floor']:.3f} "
        f"({int(round(100 * floor['quantile']))}th pct of {floor['n_directions']} random directions): "
        f"{verdict} the floor, at the {pct}th percentile"
    )


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


# ---------------------------------------------------------------- reading labelled margins


@dataclass
class LabelledMargins:
    """A preference table with its raw margins, pair texts and (if known) severity differences."""

    dataset: datasets.Dataset
    views: list[PairView]
    raw: np.ndarray
    severity: np.ndarray | None
    source: str
    annotated_now: bool = False
    margin_column: str = "margin_raw"
    # Embedding differences e(p+c) − e(p+r) at the direction's layer/pooling (for the random floor).
    differences: np.ndarray | None = None
    differences_source: str | None = None


PKU_SEVERITY = ("response_0_severity_level", "response_1_severity_level", "safer_response_id")


def severity_difference(
    dataset: datasets.Dataset, columns: tuple[str, str] | None = None, *, source: str = "<data>"
) -> np.ndarray | None:
    """Severity of rejected − severity of chosen per row, or None when the table has no severity.

    `columns` names (chosen severity, rejected severity) columns; otherwise PKU-SafeRLHF's
    `response_{0,1}_severity_level` are mapped through `safer_response_id` (the safer one is chosen).
    """
    names = dataset.column_names
    if columns is not None:
        for column in columns:
            if column not in names:
                raise DataError(f"{source}: no severity column {column!r} (columns: {', '.join(names)})")
        chosen, rejected = (_numbers(dataset[c], c, source) for c in columns)
        return rejected - chosen
    if not all(c in names for c in PKU_SEVERITY):
        return None
    level0, level1 = (_numbers(dataset[c], c, source) for c in PKU_SEVERITY[:2])
    safer = _numbers(dataset["safer_response_id"], "safer_response_id", source)
    return np.where(safer == 0, level1 - level0, level0 - level1)


def _numbers(values: Sequence[Any], column: str, source: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values, start=1):
        try:
            out[row - 1] = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{source}: row {row}: field {column!r}: expected a number, got {value!r}") from None
        if not math.isfinite(out[row - 1]):
            raise DataError(f"{source}: row {row}: field {column!r}: expected a finite number, got {value!r}")
    return out


def read_labelled_margins(
    data: str | os.PathLike | datasets.Dataset,
    *,
    direction: str | os.PathLike | None = None,
    model: Any = None,
    columns: ColumnNames = ColumnNames(),
    severity_columns: tuple[str, str] | None = None,
    limit: int | None = None,
    split: str = "train",
    annotate_settings: AnnotateSettings | None = None,
    margin_column: str = "margin_raw",
    source: str | None = None,
    keep_differences: bool = False,
) -> LabelledMargins:
    """Read a preference table with its margins: `margin_column` if present, else annotate with `direction`.

    `model` (a LoadedModel or a spec) is only used when annotating (which writes `margin_raw`);
    None means the direction's model. Any numeric column of margins can be read (e.g. one
    `margin_<name>` column of a multi-direction annotation). With `keep_differences` and a
    direction, the same encoding pass also keeps the pairs' embedding differences (for
    `random_floor`); without a direction they are read from an embeddings file beside the data
    (`differences_path`, written by `legend annotate --keep-embeddings`) when there is one.
    """
    pairs = read_pairs(data, columns, split=split, limit=limit, source_name=source)
    dataset, source = pairs.table, pairs.source
    annotated_now = False
    differences = None
    differences_source = None
    if direction is not None and keep_differences:
        settings = annotate_settings or AnnotateSettings(columns=columns)
        raw_now, differences = _margins_and_differences(dataset, direction, model, settings, source)
        if "margin_raw" in dataset.column_names:
            dataset = dataset.remove_columns("margin_raw")
        dataset = dataset.add_column("margin_raw", raw_now.tolist())
        annotated_now, margin_column, differences_source = True, "margin_raw", "recomputed with the direction"
    elif direction is not None:
        settings = annotate_settings or AnnotateSettings(columns=columns)
        dataset = annotate(dataset, direction, model, settings, source=source).dataset
        annotated_now, margin_column = True, "margin_raw"
    raw = read_margin_column(dataset, margin_column, source=source, instead="pass --direction")
    if differences is None and keep_differences and not isinstance(data, datasets.Dataset):
        stored = differences_path(data)
        if stored.is_file():
            differences = read_differences(stored, len(dataset), margin_column)
            differences_source = str(stored)
    return LabelledMargins(
        dataset=dataset,
        views=pairs.views,
        raw=raw,
        severity=severity_difference(dataset, severity_columns, source=source),
        source=source,
        annotated_now=annotated_now,
        margin_column=margin_column,
        differences=differences,
        differences_source=differences_source,
    )


DIFFERENCES_SUFFIX = ".differences.safetensors"


def differences_path(annotated: str | os.PathLike) -> Path:
    """Where `legend annotate --keep-embeddings` keeps the embedding differences of `annotated`."""
    path = Path(annotated)
    return path.with_name(path.name + DIFFERENCES_SUFFIX)


def write_differences(path: str | os.PathLike, differences: np.ndarray, margin_column: str = "margin_raw") -> None:
    """Save (n_pairs × dim) embedding differences, row i = row i of the annotated file, atomically."""
    from safetensors.numpy import save_file

    from .io import atomic_path

    with atomic_path(Path(path)) as tmp:
        save_file(
            {"differences": np.ascontiguousarray(differences, dtype=np.float32)},
            str(tmp),
            metadata={"margin_column": margin_column, "rows": str(len(differences))},
        )


def read_differences(path: str | os.PathLike, n_rows: int, margin_column: str = "margin_raw") -> np.ndarray:
    """Embedding differences saved by `write_differences`, checked against the table they belong to."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as handle:
            stored_column = (handle.metadata() or {}).get("margin_column", "margin_raw")
            names = list(handle.keys())
            if "differences" not in names:
                found = ", ".join(names) or "none"
                raise DataError(f"{path}: no tensor named 'differences' (found: {found}): not legend's embedding file")
            differences = handle.get_tensor("differences")
    except DataError:
        raise
    except Exception as err:  # safetensors' own error type for a damaged or truncated file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"{path}: not a readable safetensors file ({first}): the embedding differences are damaged; delete the "
            "file (it is only needed for the random floor) or annotate again"
        ) from None
    if not np.issubdtype(differences.dtype, np.floating) or not np.isfinite(differences).all():
        raise DataError(f"{path}: the embedding differences must be finite floating-point numbers")
    if differences.ndim != 2 or differences.shape[0] != n_rows:
        raise DataError(
            f"{path}: embedding differences for {differences.shape[0] if differences.ndim else 0} rows, but the data "
            f"has {n_rows} (shape {tuple(differences.shape)})"
        )
    if stored_column != margin_column:
        raise DataError(f"{path}: embedding differences of {stored_column!r}, not of {margin_column!r}")
    return differences


def _margins_and_differences(
    dataset: datasets.Dataset, direction: Any, model: Any, settings: AnnotateSettings, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Raw margins and embedding differences of every pair from ONE encoding pass (model loaded last)."""
    from .annotation import load_directions
    from .margins import compute_margins_multi
    from .models import as_loaded

    directions, _ = load_directions(direction)
    views = read_pairs(dataset, settings.columns, source_name=source).views
    lm = as_loaded(model, fallback=directions[0].model_id)
    result = compute_margins_multi(lm, views, directions[:1], settings.encoding, keep_differences=True)[0]
    assert result.differences is not None
    return result.raw, result.differences


def evaluate_labelled(
    labelled: LabelledMargins,
    *,
    n_random: int = DEFAULT_RANDOM_DIRECTIONS,
    **options: Any,
) -> dict[str, Any]:
    """`evaluate_margins` on what `read_labelled_margins` returned, with the source recorded.

    When the embedding differences are known, `result["random_floor"]` holds `random_floor` with
    `n_random` directions (0: skip it); else `result["random_floor"]` is None.
    """
    chosen, rejected = [v.chosen for v in labelled.views], [v.rejected for v in labelled.views]
    result = evaluate_margins(labelled.raw, chosen, rejected, labelled.severity, **options)
    result["source"] = labelled.source
    result["random_floor"] = None
    if labelled.differences is not None and n_random > 0:
        floor = random_floor(
            labelled.differences,
            labelled.raw,
            chosen,
            rejected,
            labelled.severity,
            length=options.get("length", len),
            n_directions=n_random,
            seed=options.get("seed", 0),
        )
        floor["differences_source"] = labelled.differences_source
        result["random_floor"] = floor
    return result
