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

One module per mechanism:

* `agreement`  `METRICS`, `margin_metrics`, `evaluate_margins`, `evaluate_margin_lengths`, `text_length`;
* `floor`      `random_floor`, `floor_from_random_margins`, `label_evidence`, `few_pairs_caution`, `floor_line`;
* `labelled`   `LabelledMargins`, `read_labelled_margins`, `severity_difference`, `evaluate_labelled`.
"""

from __future__ import annotations

from ..metrics import random_unit_directions
from .agreement import (
    DEFAULT_BOOTSTRAP,
    METRICS,
    evaluate_margin_lengths,
    evaluate_margins,
    finite_or_none,
    margin_metrics,
    text_length,
)
from .floor import (
    DEFAULT_RANDOM_DIRECTIONS,
    EVIDENCE_METRICS,
    FLOOR_METRICS,
    FLOOR_QUANTILE,
    few_pairs_caution,
    floor_from_random_margins,
    floor_line,
    label_evidence,
    random_floor,
)
from .labelled import (
    PKU_SEVERITY,
    LabelledMargins,
    evaluate_labelled,
    read_labelled_margins,
    severity_difference,
)

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_RANDOM_DIRECTIONS",
    "EVIDENCE_METRICS",
    "FLOOR_METRICS",
    "FLOOR_QUANTILE",
    "METRICS",
    "PKU_SEVERITY",
    "LabelledMargins",
    "evaluate_labelled",
    "evaluate_margin_lengths",
    "evaluate_margins",
    "few_pairs_caution",
    "finite_or_none",
    "floor_from_random_margins",
    "floor_line",
    "label_evidence",
    "margin_metrics",
    "random_floor",
    "random_unit_directions",  # from legend.metrics; named here by docs/quality.md and the benchmarks
    "read_labelled_margins",
    "severity_difference",
    "text_length",
]
