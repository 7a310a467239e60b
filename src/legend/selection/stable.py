"""The stable band rule: the layer of a direction, chosen so that it does not depend on which contrast pairs
were brought (issue 18; docs/selection.md).

One 80/20 split validates on ~26 pairs, and its noise moved the old band rule's choice over layers
15-28 with the split's seed alone. This rule draws 200 bootstrap resamples of the pairs; for each it
fits the mean difference on the drawn pairs and measures the effect size of the pairs left out (every
pair is validated many times), averages that over a band of 5 layers, and then applies the
one-standard-error rule: among the bands within one bootstrap SD of the best, the one nearest the
prior depth (the middle of the allowed range) wins. Where the evidence is flat the prior decides; a
band clearly better wins wherever it is. Running the same choice on every resample gives its
stability (how often it lands in the chosen band, the range), recorded in the direction and printed,
with a warning when the choice is unstable or at the edge of the allowed range.

>>> eligible_centres(range(1, 31), 30)[:3], prior_centre(eligible_centres(range(1, 31), 30))
([15, 16, 17], 21.5)
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

Embeddings = dict[tuple[int, str], torch.Tensor]

BAND_WIDTH = 2  # a band is the centre layer and 2 layers on each side
MIN_DEPTH = 0.5  # band centres in the upper half of the network
N_RESAMPLES = 200  # bootstrap resamples of the contrast pairs: the SE of a share is <= 0.035
TOLERANCE_SE = 1.0  # the one-standard-error rule: bands within 1 SE of the best are "as good"
STABLE_SHARE = 0.5  # warn when fewer than half of the resamples choose a centre inside the chosen band
SEED = 0
STABLE_RULE = (
    "stable band rule: over 200 bootstrap resamples of the contrast pairs, the out-of-bag effect size of the "
    "mean-difference direction, averaged over the band L-2..L+2 (centres L >= 0.5 x depth); among the bands "
    "within one bootstrap SD of the best, the one nearest the middle of the allowed range (ties: the deeper)"
)


def eligible_centres(layers: Sequence[int], num_layers: int, width: int = BAND_WIDTH, min_depth: float = MIN_DEPTH):
    """Band centres c with c >= min_depth * num_layers and the whole band c-width..c+width among `layers`.

    >>> eligible_centres(range(1, 31), 30)
    [15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28]
    """
    swept = set(layers)
    return [
        c
        for c in sorted(swept)
        if c >= min_depth * num_layers and all(x in swept for x in range(c - width, c + width + 1))
    ]


def prior_centre(centres: Sequence[int]) -> float:
    """The prior depth: the middle of the eligible centres, the point farthest from both edges of the
    allowed range (21.5 for a 30-layer model: 15..28). Chosen where the evidence cannot tell bands apart.

    >>> prior_centre([15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28])
    21.5
    """
    return (min(centres) + max(centres)) / 2


def resample_indices(n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED, groups=None) -> np.ndarray:
    """[n_resamples, n] bootstrap draws of pair indices (with replacement). With `groups` (the source of
    each pair) the draw is stratified: each source keeps its number of pairs in every resample."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.integers(0, n, size=(n_resamples, n))
    labels = np.asarray(groups)
    out = np.empty((n_resamples, n), dtype=np.int64)
    for g in dict.fromkeys(labels.tolist()):
        members = np.flatnonzero(labels == g)
        out[:, members] = members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
    return out


def oob_effect_sizes(
    harmless: Embeddings, harmful: Embeddings, layers: Sequence[int], pooling: str, draws: np.ndarray
) -> np.ndarray:
    """[n_resamples, len(layers)] out-of-bag effect size of the mean-difference direction at each layer.

    For each resample b and layer: v = unit(mean over the drawn pairs of harmless - harmful); the pairs
    NOT drawn (out of bag, ~37%) are projected, d_i = (harmless_i - harmful_i) . v, and the effect size is
    mean(d) / std(d) (ddof 1, as legend.metrics.effect_size). Every pair is validated in many resamples,
    unlike one 80/20 split (26 validation pairs of 131, 10 of 48). NaN when fewer than 2 pairs are out of bag.
    """
    n_res, n = draws.shape
    counts = np.zeros((n_res, n))
    np.add.at(counts, (np.arange(n_res)[:, None], draws), 1.0)
    oob = counts == 0  # [B, n]
    k = oob.sum(1)
    out = np.full((n_res, len(layers)), np.nan)
    for j, layer in enumerate(layers):
        diffs = (harmless[(layer, pooling)].double() - harmful[(layer, pooling)].double()).numpy()  # [n, h]
        means = counts @ diffs  # [B, h], proportional to the in-bag mean difference
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        proj = diffs @ (means / np.where(norms > 0, norms, 1.0)).T  # [n, B]
        proj = proj.T  # [B, n]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(oob, proj, 0.0).sum(1) / k
            var = np.where(oob, (proj - mean[:, None]) ** 2, 0.0).sum(1) / (k - 1)
            es = mean / np.sqrt(var)
        es[(k < 2) | (norms[:, 0] == 0)] = np.nan
        out[:, j] = es
    return out


def resampled_band_scores(scores: np.ndarray, layers: Sequence[int], centres: Sequence[int], width: int = BAND_WIDTH):
    """[..., len(centres)]: the mean of `scores` [..., len(layers)] over each band c-width..c+width."""
    index = {layer: j for j, layer in enumerate(layers)}
    with warnings.catch_warnings():  # a band no resample could score (all NaN) stays NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack(
            [np.nanmean(scores[..., [index[x] for x in range(c - width, c + width + 1)]], axis=-1) for c in centres],
            axis=-1,
        )


def choose_centre(band: np.ndarray, centres: Sequence[int], tolerance, prior: float) -> int:
    """The one-standard-error rule with a prior: among the centres whose band score is within `tolerance`
    (a number, or one per centre) of the best, the one nearest the prior depth (ties: the deeper). Where
    the evidence is flat the prior wins; a band clearly better (by more than the tolerance) wins wherever it is.

    >>> choose_centre(np.array([1.0, 1.1, 1.05, 1.0]), [10, 11, 12, 13], 0.2, prior=12.5)
    13
    >>> choose_centre(np.array([1.0, 2.0, 1.05, 1.0]), [10, 11, 12, 13], 0.2, prior=12.5)
    11
    """
    best = np.nanmax(band)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=float), np.shape(band))
    near = [c for c, s, t in zip(centres, band, tol) if s >= best - t]
    return min(near, key=lambda c: (abs(c - prior), -c))


def stability_figures(choices: Sequence[int], chosen: int, centres: Sequence[int], width: int = BAND_WIDTH) -> dict:
    """How stable a choice is, from the choices the same rule made on each resample.

    share_exact: share of resamples choosing `chosen`; share_in_band: share choosing a centre inside the
    chosen band (|c - chosen| <= width); range: min and max chosen; q05/q95: 5th/95th percentiles;
    at_edge: `chosen` is the lowest or highest eligible centre; warnings: an unstable choice
    (share_in_band < STABLE_SHARE) and a choice at the edge of the allowed range.

    >>> f = stability_figures([22, 22, 21, 15, 22, 24, 22, 20, 22, 22], 22, list(range(15, 29)))
    >>> f["share_exact"], f["share_in_band"], f["range"]
    (0.6, 0.9, [15, 24])
    """
    values = np.asarray(choices)
    figures: dict[str, Any] = {
        "share_exact": float(np.mean(values == chosen)),
        "share_in_band": float(np.mean(np.abs(values - chosen) <= width)),
        "range": [int(values.min()), int(values.max())],
        "q05_q95": [float(np.quantile(values, 0.05)), float(np.quantile(values, 0.95))],
        "counts": {int(k): int(v) for k, v in sorted(Counter(values.tolist()).items())},
        "at_edge": chosen in (min(centres), max(centres)),
    }
    warnings = []
    if figures["share_in_band"] < STABLE_SHARE:
        warnings.append(
            f"unstable layer choice: only {figures['share_in_band']:.0%} of {len(values)} resamples of the contrast "
            f"pairs choose a centre within {width} layers of {chosen} "
            f"(range {figures['range'][0]}-{figures['range'][1]})"
        )
    if figures["at_edge"]:
        side = "lowest" if chosen == min(centres) else "highest"
        warnings.append(
            f"the chosen layer {chosen} is the {side} band centre allowed ({min(centres)}-{max(centres)}): "
            "the evidence points outside the range searched"
        )
    figures["warnings"] = warnings
    return figures


@dataclass
class StableChoice:
    """What `stable_band_choice` chose and why (all of it JSON-ready for the artifact's config.json)."""

    centre: int
    band: list[int]
    pooling: str
    prior: float
    best_centre: int  # the highest mean band score, before the tolerance and the prior
    tolerance: list[float]  # per centre; 1 SE: the bootstrap SD of the best centre's band score
    candidates: list[int]  # centres within the tolerance of the best
    centres: list[int]
    band_score: list[float]  # mean over resamples, one per centre
    band_score_sd: list[float]
    stability: dict = field(default_factory=dict)
    # The evidence alone, before tolerance and prior: where each resample's highest band lies.
    evidence: dict = field(default_factory=dict)
    n_pairs: int = 0
    n_resamples: int = N_RESAMPLES
    seed: int = SEED

    def to_dict(self) -> dict:
        return asdict(self)


def stable_band_choice(
    harmless: Embeddings,
    harmful: Embeddings,
    *,
    num_layers: int,
    pooling: str = "mean",
    layers: Sequence[int] | None = None,
    groups=None,
    width: int = BAND_WIDTH,
    min_depth: float = MIN_DEPTH,
    n_resamples: int = N_RESAMPLES,
    tolerance_se: float = TOLERANCE_SE,
    paired: bool = False,
    seed: int = SEED,
) -> StableChoice:
    """The layer (band centre) for a mean-difference direction, robust to which contrast pairs were brought.

    1. Draw `n_resamples` bootstrap resamples of the pairs (stratified by `groups` when given).
    2. Per resample and layer, the out-of-bag effect size of the in-bag mean-difference direction
       (`oob_effect_sizes`); per resample and eligible centre, its mean over the band (`band_scores`).
    3. Mean band score over resamples; best = the highest; tolerance = `tolerance_se` x the bootstrap SD
       of the best centre's band score (the one-standard-error rule). `paired=True` (a variant that was
       measured, not the rule): per centre, `tolerance_se` x the bootstrap SD of (best's score - its score).
    4. Chosen = among the centres within the tolerance of the best, the nearest the prior depth (the
       middle of the allowed range), ties to the deeper (`choose_centre`).
    5. Stability: steps 3-4 applied to every resample's own band scores (same tolerance) give one choice
       per resample; `stability_figures` summarises them and says when to warn.
    """
    if layers is None:
        layers = sorted({layer for layer, p in harmless if p == pooling and layer >= 1})
    layers = list(layers)
    centres = eligible_centres(layers, num_layers, width, min_depth)
    if not centres:  # too few layers swept for a whole band in the upper half: every swept layer may be a centre
        width = 0
        centres = list(layers)
    n = len(next(iter(harmless.values())))
    draws = resample_indices(n, n_resamples, seed, groups)
    per_resample = resampled_band_scores(
        oob_effect_sizes(harmless, harmful, layers, pooling, draws), layers, centres, width
    )
    mean = np.nanmean(per_resample, axis=0)
    sd = np.nanstd(per_resample, axis=0, ddof=1)
    best_j = int(np.nanargmax(mean))
    if paired:
        tolerance = tolerance_se * np.nanstd(per_resample[:, [best_j]] - per_resample, axis=0, ddof=1)
    else:
        tolerance = np.full(len(centres), tolerance_se * float(sd[best_j]))
    prior = prior_centre(centres)
    centre = choose_centre(mean, centres, tolerance, prior)
    finite = [row for row in per_resample if np.isfinite(row).any()]
    choices = [choose_centre(row, centres, tolerance, prior) for row in finite]
    best_each = np.array([centres[int(np.nanargmax(row))] for row in finite])
    candidates = [c for c, s, t in zip(centres, mean, tolerance) if s >= mean[best_j] - t]
    evidence = {
        "share_best_in_band": float(np.mean(np.abs(best_each - centre) <= width)),
        "best_range": [int(best_each.min()), int(best_each.max())],
        "prior_decided": len(candidates) > 1,
    }
    return StableChoice(
        centre=centre,
        band=[x for x in range(centre - width, centre + width + 1)],
        pooling=pooling,
        prior=prior,
        best_centre=centres[best_j],
        tolerance=[float(x) for x in tolerance],
        candidates=candidates,
        centres=centres,
        band_score=[float(x) for x in mean],
        band_score_sd=[float(x) for x in sd],
        stability=stability_figures(choices, centre, centres, width),
        evidence=evidence,
        n_pairs=n,
        n_resamples=n_resamples,
        seed=seed,
    )


REPEAT_SHARE = 0.5  # warn when fewer distinct answers than half the pairs on either side


def repeated_answers_warning(harmless: Sequence[str], harmful: Sequence[str]) -> str | None:
    """A warning when one side of the contrast pairs is mostly repeats (distinct answers < REPEAT_SHARE x
    pairs, after stripping whitespace): the mean difference then measures the distance from a few strings
    (a refusal template) rather than harm. The paper's one refusal, the 25-phrasing refusal bank and
    XSTest's GPT-4 refusals ("Sorry, but I can't assist with that." 44 times in 48) are such sets.

    >>> repeated_answers_warning(["no."] * 4 + ["never."], ["a", "b", "c", "d", "e"]) is not None
    True
    >>> repeated_answers_warning(["no.", "never.", "nope", "no way"], ["a", "b", "c", "d"]) is None
    True
    """
    n = len(harmless)
    for side, texts in (("harmless", harmless), ("harmful", harmful)):
        distinct = len({t.strip() for t in texts})
        if distinct < REPEAT_SHARE * n:
            return (
                f"only {distinct} distinct {side} answers in {n} contrast pairs: the direction measures the "
                "distance from those few answers (a template) more than harm, and such pairs transferred worse "
                "(issue 18); bring varied answers, e.g. add the bundled XSTest pairs"
            )
    return None
