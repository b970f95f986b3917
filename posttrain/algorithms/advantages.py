"""Advantage estimators for critic-free policy gradients, one small function each.

Every estimator maps the rewards of one step, ``rewards (N, G)`` (N prompts, G samples
each), to advantages of the same shape, and has the same signature:

    fn(rewards, *, eps=1e-6, all_sum=identity) -> advantages (N, G)

so a recipe picks one from ``ADVANTAGES`` by name (config ``grpo.advantage``).

- ``grpo``: (r - group mean) / (group std + eps) (Shao et al. 2024, DeepSeekMath,
  arXiv 2402.03300); the std is the unbiased one, as it always was here.
- ``dr_grpo``: r - group mean (Liu et al. 2025, "Understanding R1-Zero-like training",
  arXiv 2503.20783): the std division is what biases GRPO towards easy and hard prompts.
- ``rloo``: r_i - mean of the other G-1 rewards of the group (Ahmadian et al. 2024,
  "Back to Basics: Revisiting REINFORCE Style Optimization", arXiv 2402.14740);
  equal to G/(G-1) times the ``dr_grpo`` advantage.
- ``reinforce_pp``: (r - batch mean) / (batch std + eps) over the whole global batch
  (Hu 2025, REINFORCE++, arXiv 2501.03262).
- ``reinforce_pp_baseline``: r - group mean, then divided by the batch std of those
  centred values (REINFORCE++-baseline, same paper).

Batch statistics are global: each process holds a share of the step's groups, so the
batch estimators reduce (count, sum, sum of squares) with ``all_sum`` (the caller
passes ``posttrain.train.distributed.all_sum``; the default is one process) and every
process then normalises with the same mean and std.

Missing rewards are NaN; the caller drops their groups. A NaN never reaches another
group's advantages: group estimators read only their own group, and the batch
statistics skip every group that holds a NaN (the caller drops it, so the statistics
are those of the batch without it).

Departure on purpose: REINFORCE++ normalises per-token returns (outcome reward minus
the KL penalties still to come) over all tokens of the batch. Here the reward is one
number per sequence (with a KL penalty, already summed per sequence by
``grpo.kl_reward_penalty``), and the normalisation is over sequences, so every token of
a sequence shares its advantage, as in GRPO.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

AdvantageFn = Callable[..., torch.Tensor]
AllSum = Callable[[list[float]], list[float]]


def identity_sum(values: list[float]) -> list[float]:
    """``all_sum`` of a single process: the values themselves."""
    return [float(v) for v in values]


def _group_centred(rewards: torch.Tensor) -> torch.Tensor:
    return rewards - rewards.mean(dim=1, keepdim=True)


def _batch_mean_std(values: torch.Tensor, all_sum: AllSum) -> tuple[float, float]:
    """Mean and unbiased std of ``values`` (N, G) over all processes, groups with a NaN left out.

    One reduction of (count, sum, sum of squares); ``all_sum`` works in float64, and
    the sums are taken in float64 here, so the cancellation in sum(x^2) - n * mean^2
    stays far below the float32 resolution of the rewards themselves.
    """
    v = values[~torch.isnan(values).any(dim=1)].double()
    n, s, sq = all_sum([float(v.numel()), float(v.sum()), float((v * v).sum())])
    if n < 1:
        return math.nan, math.nan
    mean = s / n
    var = max(sq - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def grpo_advantages(rewards: torch.Tensor, *, eps: float = 1e-6, all_sum: AllSum = identity_sum) -> torch.Tensor:
    """(r - group mean) / (group std + eps) per group (DeepSeekMath, arXiv 2402.03300).

    A group whose rewards are all equal gets zeros, not NaN. ``all_sum`` is unused:
    every statistic is inside one group, which one process holds whole.
    """
    return _group_centred(rewards) / (rewards.std(dim=1, keepdim=True, unbiased=True) + eps)


def dr_grpo_advantages(rewards: torch.Tensor, *, eps: float = 1e-6, all_sum: AllSum = identity_sum) -> torch.Tensor:
    """r - group mean, no std division (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783)."""
    return _group_centred(rewards)


def rloo_advantages(rewards: torch.Tensor, *, eps: float = 1e-6, all_sum: AllSum = identity_sum) -> torch.Tensor:
    """r_i - (sum of the group - r_i) / (G - 1) (RLOO, Ahmadian et al. 2024, arXiv 2402.14740).

    Each sample's baseline excludes the sample, so the estimate stays unbiased.
    """
    G = rewards.shape[1]
    if G < 2:
        raise ValueError("rloo advantages need at least 2 samples per prompt (the baseline is the others' mean)")
    return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (G - 1)


def reinforce_pp_advantages(
    rewards: torch.Tensor, *, eps: float = 1e-6, all_sum: AllSum = identity_sum
) -> torch.Tensor:
    """(r - batch mean) / (batch std + eps) over the global batch (REINFORCE++, arXiv 2501.03262)."""
    mean, std = _batch_mean_std(rewards, all_sum)
    return (rewards - mean) / (std + eps)


def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor, *, eps: float = 1e-6, all_sum: AllSum = identity_sum
) -> torch.Tensor:
    """(r - group mean) / (batch std of the centred rewards + eps) (REINFORCE++-baseline, arXiv 2501.03262).

    The group mean removes the prompt's difficulty; the global std sets one scale for
    the whole batch instead of one per group (GRPO), so a group with a small spread
    is not blown up to unit variance.
    """
    centred = _group_centred(rewards)
    _, std = _batch_mean_std(centred, all_sum)
    return centred / (std + eps)


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,
}
