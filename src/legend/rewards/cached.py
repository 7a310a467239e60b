"""A reward model on a cached frozen trunk: `legend train-rm --train-layers 0` without re-running the trunk.

With `--train-layers 0` the product path (TRL RewardTrainer on `AutoModelForSequenceClassification`)
trains only the final norm's gain and the reward head; every block below is frozen, so the states
they produce never change during training. A reward is then

    r = w · (g ⊙ x̂),   x̂ = x / rms(x),  x = the last block's output at the last real token

(the token the sequence-classification head reads: the final end-of-turn token, see
`models.ensure_pad_token`). x̂ is computed ONCE per text (`head_features`, one `legend.encoding.encode`
pass with legend's tokenisation), and `train_cached_head` trains g and w on it with the same loss,
`-log σ(r_c − r_r − m)` (m = α·margin, or 0 for plain Bradley–Terry), the same optimiser (AdamW,
linear decay, no warm-up) and the same per-epoch shuffling as the Trainer. Used by
`benchmarks/bench_rewards.py` to run many cross-fitted reward models on a CPU; see docs/rewards.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data import Message
from ..encoding import EncodeConfig, Encoded, encode, find_final_norm
from ..models import LoadedModel


@dataclass(frozen=True)
class CachedHeadSettings:
    """Training of the reward head (+ final-norm gain) on cached features."""

    learning_rate: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    weight_decay: float = 0.0
    init_std: float = 0.02  # the head's initialisation (transformers: config.initializer_range)
    seed: int = 0  # head initialisation and data order
    train_gain: bool = True  # train the final norm's gain, as `--train-layers 0` does

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.init_std <= 0:
            raise ValueError("learning_rate and init_std must be positive")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be non-negative")


@dataclass
class HeadFeatures:
    """What one encoding pass gives: everything `encode` captured, and x̂ for the reward head."""

    encoded: Encoded
    normalized: torch.Tensor  # [n_texts, hidden] float32: the final norm's output divided by its gain


def final_norm_weight(lm: LoadedModel) -> torch.Tensor:
    """The final norm's gain g (float32); the head features are defined relative to it."""
    norm = find_final_norm(lm.model.base_model)
    weight = getattr(norm, "weight", None)
    if weight is None:
        raise ValueError(f"{lm.model_id}: no final norm with a weight; the cached head needs one")
    weight = weight.detach().float().cpu()
    if bool((weight.abs() < 1e-8).any()):
        raise ValueError(f"{lm.model_id}: the final norm has a zero gain; x̂ cannot be recovered from its output")
    return weight


def head_features(
    lm: LoadedModel, items: Sequence[tuple[Sequence[Message], str]], config: EncodeConfig = EncodeConfig()
) -> HeadFeatures:
    """Encode (prompt, response) items once; x̂ = final-norm output at the last token / g.

    The config's layers and poolings are kept (for margins), with the last layer's last token added.
    """
    layers = tuple(dict.fromkeys((*config.layers, lm.num_layers)))
    poolings = tuple(dict.fromkeys((*config.poolings, "last")))
    encoded = encode(lm, items, dataclasses.replace(config, layers=layers, poolings=poolings))
    normalized = encoded.vectors[(lm.num_layers, "last")] / final_norm_weight(lm)
    return HeadFeatures(encoded=encoded, normalized=normalized)


class CachedRewardHead(torch.nn.Module):
    """r = w · (g ⊙ x̂): the final norm's gain g and a bias-free linear head w (as in transformers)."""

    def __init__(self, gain: torch.Tensor, init_std: float, generator: torch.Generator, train_gain: bool = True):
        super().__init__()
        self.gain = torch.nn.Parameter(gain.detach().clone().float(), requires_grad=train_gain)
        self.weight = torch.nn.Parameter(torch.randn(gain.shape[0], generator=generator) * init_std)

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        return (normalized * self.gain) @ self.weight


@dataclass
class CachedTraining:
    gain: np.ndarray  # trained g
    weight: np.ndarray  # trained w
    losses: list[float]  # mean loss per step
    steps: int

    def score(self, normalized: torch.Tensor | np.ndarray) -> np.ndarray:
        """Rewards w · (g ⊙ x̂) of cached texts, float64."""
        return (np.asarray(normalized, dtype=np.float64) * self.gain) @ self.weight


def pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None) -> torch.Tensor:
    """TRL RewardTrainer's loss: mean of -log σ(r_c − r_r − margin)."""
    gap = chosen - rejected if margin is None else chosen - rejected - margin
    return -torch.nn.functional.logsigmoid(gap).mean()


def train_cached_head(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    gain: torch.Tensor,
    margins: Sequence[float] | np.ndarray | None = None,
    settings: CachedHeadSettings = CachedHeadSettings(),
) -> CachedTraining:
    """Train g and w on cached x̂ of chosen/rejected texts ([n, hidden] each); margins already scaled by α.

    r_c − r_r = (g ⊙ (x̂_c − x̂_r)) · w is linear in the difference d = x̂_c − x̂_r, so each step needs d
    only. The gradients of mean(-log σ(gap − m)) and torch's AdamW update (decoupled weight decay,
    bias correction, linear decay to 0 without warm-up, as the HF Trainer's default schedule) are
    written out in float64 numpy: ~100x faster than autograd on such small tensors, and checked
    against `torch.optim.AdamW` + autograd in the tests.
    """
    n = chosen.shape[0]
    if rejected.shape != chosen.shape or gain.shape != chosen.shape[1:]:
        raise ValueError(
            f"shapes differ: chosen {tuple(chosen.shape)}, rejected {tuple(rejected.shape)}, gain {tuple(gain.shape)}"
        )
    if n == 0:
        raise ValueError("no pairs to train on")
    offset = np.zeros(n)
    if margins is not None:
        offset = np.asarray(margins, dtype=np.float64)
        if offset.shape != (n,) or not np.isfinite(offset).all():
            raise ValueError(f"margins: expected {n} finite numbers")
    generator = torch.Generator().manual_seed(settings.seed)
    start = CachedRewardHead(gain, settings.init_std, generator, settings.train_gain)
    w = start.weight.detach().double().numpy().copy()
    g = start.gain.detach().double().numpy().copy()
    diff = chosen.double().numpy() - rejected.double().numpy()
    params = [w, g] if settings.train_gain else [w]
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    per_epoch = (n + settings.batch_size - 1) // settings.batch_size
    total = per_epoch * settings.epochs
    losses: list[float] = []
    step = 0
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator).numpy()
        for begin in range(0, n, settings.batch_size):
            rows = order[begin : begin + settings.batch_size]
            d = diff[rows]
            z = (d * g) @ w - offset[rows]
            losses.append(float(np.mean(np.logaddexp(0.0, -z))))  # -log σ(z), stable
            coef = -1.0 / (1.0 + np.exp(z)) / len(rows)  # d loss / d z_i = -σ(-z_i) / B
            grads = [(d * g).T @ coef]
            if settings.train_gain:
                grads.append((d * w).T @ coef)
            lr = settings.learning_rate * max(0.0, 1.0 - step / total)
            step += 1
            for p, grad, m1, m2 in zip(params, grads, first, second):
                p *= 1.0 - lr * settings.weight_decay
                m1 *= beta1
                m1 += (1 - beta1) * grad
                m2 *= beta2
                m2 += (1 - beta2) * grad * grad
                denom = np.sqrt(m2) / np.sqrt(1 - beta2**step) + eps
                p -= (lr / (1 - beta1**step)) * m1 / denom
    return CachedTraining(gain=g, weight=w, losses=losses, steps=total)
