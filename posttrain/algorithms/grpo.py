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
  arXiv 2503.20783), which with the ``dr_grpo`` advantage removes the length and
  difficulty biases;
- advantage estimators (group mean and std, Dr. GRPO, RLOO, REINFORCE++):
  ``posttrain.algorithms.advantages.ADVANTAGES``;
- KL estimators to a reference (Schulman 2020, "Approximating KL divergence"):
  k1 = -log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r with r = pi_ref / pi;
  in the loss (``rl_loss``) or, detached and summed per sequence, in the reward
  (``kl_reward_penalty``);
- policy losses (``POLICY_LOSSES``): the token-level clipped surrogate above
  (``ppo_clip``), GSPO's sequence-level ratio and clip (``gspo``) and CISPO's clipped,
  stop-gradient importance weight on a REINFORCE term (``cispo``);
- an entropy bonus, ``- entropy_coef * entropy`` per token.

Aggregation is expressed as per-token ``weights`` plus a ``count`` derived from the
masks alone, so the loop can divide by the count of the whole step (or of all
processes) before any forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from posttrain.algorithms.advantages import ADVANTAGES
from posttrain.algorithms.types import LossOutput, masked_sum

Metrics = dict[str, tuple[float, float]]


def group_advantages(rewards: torch.Tensor, std_normalize: bool, eps: float = 1e-6) -> torch.Tensor:
    """rewards (N, G) -> advantages (N, G): reward minus group mean, optionally / group std.

    ``ADVANTAGES["grpo"]`` or ``ADVANTAGES["dr_grpo"]``; kept for existing callers.
    """
    return ADVANTAGES["grpo" if std_normalize else "dr_grpo"](rewards, eps=eps)


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


class PolicyLossFn(Protocol):
    """A policy-gradient surrogate: per-token loss (B, T-1) and (numerator, denominator) metrics.

    Every tensor is (B, T-1), aligned to ``response_mask``; ``advantages`` holds each
    sequence's advantage at each of its tokens. ``seq_ids`` (``data.batch.sequence_ids``)
    names the sequence of every column; ``None`` means one sequence per row. Each
    function takes every argument so that one call site serves them all; an argument a
    loss does not use is documented as such.
    """

    def __call__(
        self,
        *,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        seq_ids: torch.Tensor | None,
        clip_low: float,
        clip_high: float,
        gspo_clip_low: float,
        gspo_clip_high: float,
    ) -> tuple[torch.Tensor, Metrics]: ...


def ppo_clip_loss(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    seq_ids: torch.Tensor | None = None,
    clip_low: float,
    clip_high: float,
    gspo_clip_low: float = 3e-4,
    gspo_clip_high: float = 4e-4,
) -> tuple[torch.Tensor, Metrics]:
    """-min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) per token, rho = exp(logprobs - old_logprobs).

    PPO's clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) per token, as GRPO
    uses it (arXiv 2402.03300); clip_high > clip_low is DAPO's clip-higher (arXiv
    2503.14476). ``seq_ids`` and the GSPO clips are unused. Metrics are token means:
    ``ratio``, ``clip_frac`` (tokens whose gradient the clip removed), ``logprob_gap``
    (|logprobs - old_logprobs|: on an iteration's first update, where the weights are
    the sampler's, the train/sample mismatch of the engine's numerics).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    return _clipped_surrogate(ratio, advantages, clip_low, clip_high, logprobs, old_logprobs, response_mask)


def _clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    low: float,
    high: float,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
    """-min(ratio * A, clip(ratio, 1 - low, 1 + high) * A) per token, and its metrics (token means)."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - low, 1 + high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    n = float(response_mask.sum())
    metrics = {
        "ratio": (masked_sum(ratio, response_mask), n),
        "clip_frac": (masked_sum((clipped < unclipped).float(), response_mask), n),
        "logprob_gap": (masked_sum((logprobs - old_logprobs).abs(), response_mask), n),
    }
    return per_token, metrics


def _row_ids(mask: torch.Tensor) -> torch.Tensor:
    B, T = mask.shape
    return torch.arange(B, device=mask.device).unsqueeze(1).expand(B, T)


def _per_sequence_sum(values: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) values -> (S,) sums over each sequence id, S = max id + 1 (differentiable)."""
    flat = seq_ids.flatten()
    S = int(flat.max()) + 1 if flat.numel() else 0
    return values.new_zeros(S).index_add(0, flat, values.flatten())


def gspo_loss(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    seq_ids: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    gspo_clip_low: float = 3e-4,
    gspo_clip_high: float = 4e-4,
) -> tuple[torch.Tensor, Metrics]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071).

    One importance ratio per sequence, the geometric mean of its token ratios:

        s_i = exp(mean over the response tokens of sequence i of (logprobs - old_logprobs))
        loss_i = -min(s_i A_i, clip(s_i, 1 - gspo_clip_low, 1 + gspo_clip_high) A_i)

    clipped at the sequence level with the paper's small ranges (3e-4 / 4e-4). loss_i
    is placed on each of the sequence's response tokens, so with ``seq_mean`` weights
    (1/|y_i| per token) the weighted sum is sum_i loss_i: the paper's objective. The
    gradient of s_i reaches every token of the sequence, with weight s_i / |y_i|.
    ``seq_ids`` (``data.batch.sequence_ids``) is required for packed rows; ``None``
    means one sequence per row. ``clip_low``/``clip_high`` are unused. Metrics:
    ``ratio`` (token mean of the sequence ratio), ``clip_frac`` (tokens of sequences
    whose gradient the clip removed: the figure the paper compares with GRPO's),
    ``logprob_gap``.
    """
    ids = _row_ids(response_mask) if seq_ids is None else seq_ids
    mask = response_mask.to(logprobs.dtype)
    diff = torch.where(response_mask > 0, logprobs - old_logprobs, torch.zeros_like(logprobs))
    lengths = _per_sequence_sum(mask, ids)
    log_s = _per_sequence_sum(diff * mask, ids) / lengths.clamp(min=1)
    ratio = torch.exp(log_s)[ids]  # (B, T): each token carries its sequence's ratio
    return _clipped_surrogate(ratio, advantages, gspo_clip_low, gspo_clip_high, logprobs, old_logprobs, response_mask)


def cispo_loss(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    seq_ids: torch.Tensor | None = None,
    clip_low: float,
    clip_high: float,
    gspo_clip_low: float = 3e-4,
    gspo_clip_high: float = 4e-4,
) -> tuple[torch.Tensor, Metrics]:
    """CISPO (MiniMax-M1 technical report, MiniMax 2025, arXiv 2506.13585).

        loss = -sg(clip(rho, 1 - clip_low, 1 + clip_high)) * A * logprobs

    The importance weight is clipped and detached, and multiplies a REINFORCE term, so
    a token whose ratio left the range still gets a gradient (A times the clipped
    weight) instead of none, as in ``ppo_clip``. The report clips only from above in
    practice (no lower bound): ``clip_low=1.0`` gives that. Its value is not a
    surrogate of the return, only its gradient is meaningful. ``seq_ids`` and the GSPO
    clips are unused. Metrics: ``ratio``, ``clip_frac`` (tokens whose weight the clip
    changed; they still learn), ``logprob_gap``.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    weight = ratio.clamp(1 - clip_low, 1 + clip_high).detach()
    per_token = -weight * advantages * logprobs
    n = float(response_mask.sum())
    outside = (ratio < 1 - clip_low) | (ratio > 1 + clip_high)
    metrics = {
        "ratio": (masked_sum(ratio, response_mask), n),
        "clip_frac": (masked_sum(outside.float(), response_mask), n),
        "logprob_gap": (masked_sum((logprobs - old_logprobs).abs(), response_mask), n),
    }
    return per_token, metrics


POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "ppo_clip": ppo_clip_loss,
    "gspo": gspo_loss,
    "cispo": cispo_loss,
}

_V = TypeVar("_V")


def _pick(table: dict[str, _V], name: str, what: str) -> _V:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def rl_loss(
    *,
    policy_loss: str,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    weights: torch.Tensor,
    seq_ids: torch.Tensor | None = None,
    clip_low: float,
    clip_high: float,
    gspo_clip_low: float = 3e-4,
    gspo_clip_high: float = 4e-4,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> LossOutput:
    """A policy loss from ``POLICY_LOSSES``, plus KL to the reference and an entropy bonus.

    All tensors (B, T-1). Per token:

        policy_loss + kl_coef * KL_ESTIMATORS[kl_estimator](logprobs, ref_logprobs)
                    - entropy_coef * entropy

    summed with ``weights`` (``LOSS_WEIGHTS``); the loop divides by the global count.
    ``ref_logprobs`` given: the KL is a metric, and a loss term when ``kl_coef > 0``
    (KL in the reward instead: ``kl_reward_penalty``, and ``kl_coef`` 0 here).
    ``entropy`` given: a metric; with ``entropy_coef > 0`` a bonus, which needs the
    entropy with its gradient (``token_logprobs(..., with_entropy=True, entropy_grad=True)``).
    Metrics are token means: the policy loss's, ``kl`` and ``entropy``.
    """
    loss_fn = _pick(POLICY_LOSSES, policy_loss, "policy loss")
    per_token, metrics = loss_fn(
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        advantages=advantages,
        response_mask=response_mask,
        seq_ids=seq_ids,
        clip_low=clip_low,
        clip_high=clip_high,
        gspo_clip_low=gspo_clip_low,
        gspo_clip_high=gspo_clip_high,
    )
    n = float(response_mask.sum())
    if ref_logprobs is not None:
        kl = _pick(KL_ESTIMATORS, kl_estimator, "KL estimator")(logprobs, ref_logprobs)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
        metrics["kl"] = (masked_sum(kl, response_mask), n)
    if entropy is not None:
        if entropy_coef > 0:
            per_token = per_token - entropy_coef * entropy
        metrics["entropy"] = (masked_sum(entropy, response_mask), n)
    elif entropy_coef > 0:
        raise ValueError("entropy_coef > 0 needs the entropy (token_logprobs with_entropy=True, entropy_grad=True)")
    return LossOutput(loss_sum=(per_token * weights).sum(), metrics=metrics)


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
    """``rl_loss`` with ``policy_loss="ppo_clip"`` and no entropy bonus, positionally; for existing callers.

    All tensors (B, T-1); ``advantages`` broadcast per token. Returns the weighted sum.
    Metrics are token means: ``ratio``, ``clip_frac``, ``logprob_gap``, ``kl``, ``entropy``.
    """
    return rl_loss(
        policy_loss="ppo_clip",
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        advantages=advantages,
        response_mask=response_mask,
        weights=weights,
        clip_low=clip_low,
        clip_high=clip_high,
        ref_logprobs=ref_logprobs,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        entropy=entropy,
    )


def kl_reward_penalty(
    *,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    seq_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sequence sum of k1 = old_logprobs - ref_logprobs over response tokens, detached.

    For "KL in the reward" (``grpo.kl_in: reward``): reward_i -= kl_coef * penalty_i
    before advantages, as in InstructGPT (Ouyang et al. 2022) and REINFORCE++ (arXiv
    2501.03262). The sampler's logprobs (``old_logprobs``) are those of the samples, so
    the sum is an unbiased estimate of the sequence's KL(pi_old || pi_ref); k1 is the
    usual choice here because as a reward (no gradient through it) its mean is the KL
    itself. All tensors (B, T-1). ``seq_ids`` ``None``: one sequence per row, returns
    (B,); else (max id + 1,), one entry per id of ``data.batch.sequence_ids``.
    """
    with torch.no_grad():
        k1 = torch.where(response_mask > 0, old_logprobs - ref_logprobs, torch.zeros_like(old_logprobs))
        k1 = k1 * response_mask
        if seq_ids is None:
            return k1.sum(-1)
        return _per_sequence_sum(k1, seq_ids)
