"""Best-of-n sampling: compare reward models by the responses they pick, as judged by a third scorer.

For each prompt the policy samples N = max(ns) responses once (seeded). For every n in `ns` each
reward model picks, among the first n samples, the one it scores highest; the judge then scores the
picks. Using prefixes of one sample list makes the comparison across n consistent (the n=4 candidates
are the n=2 ones plus two more) and costs one generation pass for all n.

Win rate of a challenger over the baseline (the first reward model) at n = share of prompts where the
judge scores the challenger's pick above the baseline's; a tie (often: both picked the same sample)
counts one half, so n=1 is always exactly 0.5.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ColumnNames, LayoutError, read_pairs, read_questions
from ..encoding import GenerationConfig, generate
from ..io import write_bytes_atomically
from ..metrics import win_rate, win_rate_ci
from ..models import LoadedModel
from .scoring import Prompt, Scorer

DEFAULT_NS: tuple[int, ...] = (1, 2, 4, 8, 16)


# ---------------------------------------------------------------- prompts and sampling


def read_prompts(
    source: str | os.PathLike,
    *,
    column: str | None = None,
    limit: int | None = None,
    columns: ColumnNames = ColumnNames(),
) -> list[Prompt]:
    """Prompts from a preference dataset (its pairs' prompts, any legend layout) or a file of questions.

    A question file is anything `read_questions` reads (AdvBench's `goal`, a JSON list, ...); naming
    `column` forces that reading. Each question becomes one user message.
    """
    if column is None:
        try:
            return [view.prompt for view in read_pairs(source, columns, limit=limit).views]
        except LayoutError:
            pass  # no preference layout: a file of questions
    questions = read_questions(source, column)
    if limit is not None:
        questions = questions[:limit]
    return [({"role": "user", "content": q},) for q in questions]


@dataclass(frozen=True)
class SamplingConfig:
    """How the policy samples. `batch_size` counts sequences per `generate` call (prompts x samples)."""

    n: int = 16
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut (plain sampling, as best-of-n assumes)
    batch_size: int = 64
    max_prompt_length: int = 512
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("n, max_new_tokens and batch_size must be at least 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive (best-of-n needs sampling)")


def sample_responses(lm: LoadedModel, prompts: Sequence[Prompt], config: SamplingConfig) -> list[list[str]]:
    """`config.n` sampled responses per prompt, in sample order (seeded; the same settings give the same samples).

    Prompts are rendered with the policy's chat template (or legend's plain template) and left-padded so
    each row continues at its own end. Each batch reseeds torch with `seed + index of its first prompt`.
    """
    generation = GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        batch_size=max(1, config.batch_size // config.n),
        max_prompt_length=config.max_prompt_length,
        do_sample=True,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        num_return_sequences=config.n,
        seed=config.seed,
        longest_first=False,
        progress=config.progress,
        description="sample",
    )
    return generate(lm, prompts, generation)


def score_samples(scorer: Scorer, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]]) -> np.ndarray:
    """Scores of every sample, shape [prompts, samples]."""
    n = len(responses[0]) if responses else 0
    flat_prompts = [prompt for prompt, row in zip(prompts, responses, strict=True) for _ in row]
    flat = [text for row in responses for text in row]
    return np.asarray(scorer.score(flat_prompts, flat), dtype=np.float64).reshape(len(responses), n)


def best_of_n_indices(rewards: np.ndarray, n: int) -> np.ndarray:
    """Index of the highest-reward sample among the first n of each prompt (the first one on ties)."""
    if not 1 <= n <= rewards.shape[1]:
        raise ValueError(f"n={n} is outside 1..{rewards.shape[1]} (the number of samples drawn)")
    return rewards[:, :n].argmax(axis=1)


# ---------------------------------------------------------------- comparison


@dataclass
class BestOfNReport:
    """Picks, judge scores and win rates of several reward models over a range of n."""

    ns: list[int]
    selectors: list[str]  # reward model names; the first is the baseline
    judge: str
    picks: dict[str, dict[int, list[int]]]  # selector -> n -> picked sample index per prompt
    judge_means: dict[str, dict[int, float]]  # selector -> n -> mean judge score of its picks
    reward_means: dict[str, dict[int, float]]  # selector -> n -> mean of its own reward over its picks
    win_rates: list[dict[str, Any]]  # one row per (challenger, n)
    n_prompts: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ns": self.ns,
            "selectors": self.selectors,
            "baseline": self.selectors[0],
            "judge": self.judge,
            "n_prompts": self.n_prompts,
            "win_rates": self.win_rates,
            "judge_mean_of_pick": {s: {str(n): v for n, v in d.items()} for s, d in self.judge_means.items()},
            "reward_mean_of_pick": {s: {str(n): v for n, v in d.items()} for s, d in self.reward_means.items()},
            "picks": {s: {str(n): v for n, v in d.items()} for s, d in self.picks.items()},
            "win_rate_rule": "challenger wins a prompt when the judge scores its pick above the baseline's; "
            "ties (e.g. the same sample picked) count 1/2",
            **self.extra,
        }


def compare_selectors(
    rewards: dict[str, np.ndarray],
    judge_scores: np.ndarray,
    ns: Sequence[int],
    *,
    judge: str = "judge",
    bootstrap_seed: int = 0,
) -> BestOfNReport:
    """Win rates of every reward model after the first (the baseline) against it, per n.

    `rewards[name]` and `judge_scores` are [prompts, samples] score arrays over the same samples.
    """
    if not rewards:
        raise ValueError("at least one reward model is needed")
    names = list(rewards)
    rows = np.arange(judge_scores.shape[0])
    picks: dict[str, dict[int, list[int]]] = {name: {} for name in names}
    judged: dict[str, dict[int, np.ndarray]] = {name: {} for name in names}
    reward_means: dict[str, dict[int, float]] = {name: {} for name in names}
    for name, scores in rewards.items():
        if scores.shape != judge_scores.shape:
            raise ValueError(f"reward model {name!r}: scores shape {scores.shape} != judge {judge_scores.shape}")
        for n in ns:
            index = best_of_n_indices(scores, n)
            picks[name][n] = index.tolist()
            judged[name][n] = judge_scores[rows, index]
            reward_means[name][n] = float(scores[rows, index].mean())
    table = []
    baseline = names[0]
    for challenger in names[1:]:
        for n in ns:
            a, b = judged[challenger][n], judged[baseline][n]
            low, high = win_rate_ci(a, b, seed=bootstrap_seed)
            table.append(
                {
                    "challenger": challenger,
                    "baseline": baseline,
                    "n": n,
                    "win_rate": win_rate(a, b),
                    "ci95": [low, high],
                    "wins": int((a > b).sum()),
                    "ties": int((a == b).sum()),
                    "losses": int((a < b).sum()),
                    "same_pick": int(np.sum(np.asarray(picks[challenger][n]) == np.asarray(picks[baseline][n]))),
                }
            )
    judge_means = {name: {n: float(v.mean()) for n, v in d.items()} for name, d in judged.items()}
    return BestOfNReport(
        ns=list(ns),
        selectors=names,
        judge=judge,
        picks=picks,
        judge_means=judge_means,
        reward_means=reward_means,
        win_rates=table,
        n_prompts=int(judge_scores.shape[0]),
    )


@dataclass
class BestOfNRun:
    """Everything one best-of-n run produced: the report, the samples and every score."""

    report: BestOfNReport
    prompts: list[Prompt]
    responses: list[list[str]]
    rewards: dict[str, np.ndarray]
    judge_scores: np.ndarray

    def sample_rows(self) -> list[dict[str, Any]]:
        """One row per prompt with its samples and scores (for inspection; JSONL-friendly)."""
        rows = []
        for i, (prompt, samples) in enumerate(zip(self.prompts, self.responses)):
            rows.append(
                {
                    "prompt": [dict(m) for m in prompt],
                    "responses": samples,
                    "judge": self.judge_scores[i].tolist(),
                    "rewards": {name: scores[i].tolist() for name, scores in self.rewards.items()},
                }
            )
        return rows


def run_best_of_n(
    policy: LoadedModel,
    prompts: Sequence[Prompt],
    selectors: Sequence[Scorer],
    judge: Scorer,
    *,
    ns: Sequence[int] = DEFAULT_NS,
    sampling: SamplingConfig = SamplingConfig(),
) -> BestOfNRun:
    """Sample max(ns) responses per prompt once, score them with every reward model and the judge, compare.

    Selector names must be distinct; the first selector is the baseline of the win rates.
    """
    ns = sorted(set(int(n) for n in ns))
    if not prompts:
        raise ValueError("no prompts to sample from")
    if ns[0] < 1:
        raise ValueError("every n must be at least 1")
    names = [s.name for s in selectors]
    if len(set(names)) != len(names):
        raise ValueError(f"reward model names must differ, got {names}")
    sampling = SamplingConfig(**{**sampling.__dict__, "n": ns[-1]})
    timings: dict[str, float] = {}
    start = time.perf_counter()
    responses = sample_responses(policy, prompts, sampling)
    timings["sample_seconds"] = time.perf_counter() - start
    rewards = {}
    for selector in selectors:
        start = time.perf_counter()
        rewards[selector.name] = score_samples(selector, prompts, responses)
        timings[f"score_seconds[{selector.name}]"] = time.perf_counter() - start
    start = time.perf_counter()
    judge_scores = score_samples(judge, prompts, responses)
    timings["judge_seconds"] = time.perf_counter() - start
    report = compare_selectors(rewards, judge_scores, ns, judge=judge.name, bootstrap_seed=sampling.seed)
    report.extra.update(
        policy=policy.model_id,
        sampling={k: v for k, v in sampling.__dict__.items() if k != "progress"},
        timings={k: round(v, 3) for k, v in timings.items()},
        empty_responses=int(sum(not text for row in responses for text in row)),
    )
    return BestOfNRun(
        report=report, prompts=list(prompts), responses=responses, rewards=rewards, judge_scores=judge_scores
    )


# ---------------------------------------------------------------- plot


def plot_report(report: BestOfNReport, path: str | os.PathLike) -> Path:
    """PNG: win rate vs n (with 95% bootstrap intervals) and the judge's mean score of each model's picks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for challenger in report.selectors[1:]:
        rows = [r for r in report.win_rates if r["challenger"] == challenger]
        ns = [r["n"] for r in rows]
        rates = np.array([r["win_rate"] for r in rows])
        errors = np.array([[rate - r["ci95"][0], r["ci95"][1] - rate] for rate, r in zip(rates, rows)]).T
        left.errorbar(ns, rates, yerr=errors, marker="o", capsize=3, label=f"{challenger} vs {report.selectors[0]}")
    left.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    left.set(
        xscale="log",
        xlabel="n (samples per prompt)",
        ylabel="win rate (judge)",
        ylim=(0, 1),
        title=f"best-of-n win rate, judge: {report.judge}",
    )
    for name in report.selectors:
        right.plot(report.ns, [report.judge_means[name][n] for n in report.ns], marker="o", label=name)
    right.set(
        xscale="log",
        xlabel="n (samples per prompt)",
        ylabel="mean judge score of pick",
        title=f"{report.n_prompts} prompts",
    )
    for axis in (left, right):
        axis.set_xticks(report.ns, [str(n) for n in report.ns])
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    fig.tight_layout()
    target = Path(path)
    try:
        write_bytes_atomically(target, lambda handle: fig.savefig(handle, format="png", dpi=120))
    finally:
        plt.close(fig)
    return target
