"""Group Relative Policy Optimisation and its common variants, as pure functions.

GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300): sample G completions per
prompt, use the group's mean reward as the baseline, optionally divide by the
group's std, and optimise the PPO clipped surrogate per token:

    ratio = exp(logprobs - old_logprobs)
    loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)  (+ kl_coef * KL)

Variants, each a separate small function picked from a dict:
- clip-higher (DAPO, Yu et al. 2025, arXiv 2503.14476): clip_high > clip_low;
- dynamic sampling (DAPO): drop groups whose rewards are all equal (``uniform_groups``);
- loss aggregation: token mean over the batch (DAPO), mean per sequence then over
  sequences (original GRPO), or a constant normaliser (Dr. GRPO, Liu et al. 2025,
  arXiv 2503.20783), which with ``std_normalize=False`` removes the length and
  difficulty biases;
- KL estimators to a reference (Schulman 2020, "Approximating KL divergence"):
  k1 = -log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r with r = pi_ref / pi.

Aggregation is expressed as per-token ``weights`` plus a ``count`` derived from the
masks alone, so the loop can divide by the count of the whole step (or of all
processes) before any forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from posttrain.algorithms.types import LossOutput, masked_sum


def group_advantages(rewards: torch.Tensor, std_normalize: bool, eps: float = 1e-6) -> torch.Tensor:
    """rewards (N, G) -> advantages (N, G): reward minus group mean, optionally / group std."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not std_normalize:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=True) + eps)


def uniform_groups(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (N, G) -> (N,) bool: groups that carry no learning signal (all rewards equal)."""
    return (rewards == rewards[:, :1]).all(dim=1)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    # clamped: positions no loss reads (padding, gaps between packed sequences) must not overflow to inf
    log_r = (ref_logprobs - logprobs).clamp(max=20.0)
    return torch.exp(log_r) - 1 - log_r


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def weights_token_mean(mask: torch.Tensor, max_len: int) -> tuple[torch.Tensor, float]:
    return mask, float(mask.sum())


def weights_seq_mean(mask: torch.Tensor, max_len: int) -> tuple[torch.Tensor, float]:
    lengths = mask.sum(-1, keepdim=True)
    return mask / lengths.clamp(min=1), float((lengths > 0).sum())


def weights_constant(mask: torch.Tensor, max_len: int) -> tuple[torch.Tensor, float]:
    return mask, float((mask.sum(-1) > 0).sum()) * max_len


LOSS_WEIGHTS: dict[str, Callable[[torch.Tensor, int], tuple[torch.Tensor, float]]] = {
    "token_mean": weights_token_mean,
    "seq_mean": weights_seq_mean,
    "constant": weights_constant,
}


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    weights: torch.Tensor,
    clip_low: float,
    clip_high: float,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
) -> LossOutput:
    """All tensors (B, T-1); ``advantages`` broadcast per token. Returns the weighted sum.

    Metrics are token means: ``ratio``, ``clip_frac`` (tokens whose gradient the clip
    removed), ``logprob_gap`` (|logprobs - old_logprobs|: on an iteration's first
    update, where the weights are the sampler's, the train/sample mismatch of the
    engine's numerics), ``kl`` and ``entropy``.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    n = float(response_mask.sum())
    metrics = {
        "ratio": (masked_sum(ratio, response_mask), n),
        "clip_frac": (masked_sum((clipped < unclipped).float(), response_mask), n),
        "logprob_gap": (masked_sum((logprobs - old_logprobs).abs(), response_mask), n),
    }
    if ref_logprobs is not None:
        kl = KL_ESTIMATORS[kl_estimator](logprobs, ref_logprobs)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
        metrics["kl"] = (masked_sum(kl, response_mask), n)
    if entropy is not None:
        metrics["entropy"] = (masked_sum(entropy, response_mask), n)
    return LossOutput(loss_sum=(per_token * weights).sum(), metrics=metrics)
