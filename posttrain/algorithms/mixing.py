"""SFT and RL in one update: coefficient schedules, expert tokens in the RL loss. Pure functions.

Each function is one paper's rule (details the papers leave open are settings; what
was chosen is said where it is made):

- ``coef_at``: a coefficient that is constant or decays linearly over training
  (CHORD's mu, KDRL's KD weight);
- ``sft_token_loss``: CHORD's SFT term on expert demonstrations (Zhang et al. 2025,
  "On-Policy RL Meets Off-Policy Experts: Harmonizing Supervised Fine-Tuning and
  Reinforcement Learning via Dynamic Weighting", arXiv 2508.11408): the NLL of each
  demonstration token, optionally weighted per token by phi = p (1 - p), p the
  policy's probability of the token (CHORD-phi), so tokens the policy already gives
  high or very low probability pull less. phi is a weight: detached here;
- ``shaped_off_policy_loss``: LUFFY's policy shaping (Yan et al. 2025, "Learning to
  Reason under Off-Policy Guidance", arXiv 2504.14945, section 3): an expert token's
  importance ratio is pi_theta / pi_expert with pi_expert taken as 1, shaped by
  f(p) = p / (p + gamma), and not clipped: loss = -f(p) * A per token;
- ``insert_demonstrations``: LUFFY's mixed group: the last of each prompt's G samples
  is replaced by the prompt's demonstration (G - 1 on-policy, 1 off-policy), so the
  group baseline (mean and std) is taken over the mixed group;
- ``prefix_length``: Prefix-RFT (Huang et al. 2025, "Blending Supervised and
  Reinforcement Fine-Tuning with Prefix Sampling", arXiv 2507.01679): how much of a
  demonstration a prefixed rollout starts from.
"""

from __future__ import annotations

import math

import torch

from posttrain.records import Completion, ScoredGroups


def coef_at(schedule: str, start: float, end: float, it: int, total: int) -> float:
    """The coefficient at iteration ``it`` of ``total``: ``start`` throughout, or linear from ``start`` to ``end``.

    Linear reaches ``end`` at the last iteration (``total - 1``).
    """
    if schedule == "constant":
        return start
    if schedule == "linear":
        frac = min(max(it / max(total - 1, 1), 0.0), 1.0)
        return start + (end - start) * frac
    raise ValueError(f"unknown schedule {schedule!r}; known: constant, linear")


def sft_token_loss(logprobs: torch.Tensor, phi: bool) -> torch.Tensor:
    """(B, T) demonstration tokens' logprobs -> per-token NLL, times sg(p (1 - p)) with ``phi`` (CHORD-phi)."""
    nll = -logprobs
    if not phi:
        return nll
    p = logprobs.detach().exp()
    return p * (1.0 - p) * nll


def shaped_off_policy_loss(logprobs: torch.Tensor, advantages: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T) -> per-token -f(p) * A, f(p) = p / (p + gamma), p = exp(logprobs): LUFFY's shaped, unclipped term."""
    p = logprobs.exp()
    return -(p / (p + gamma)) * advantages


def prefix_length(demo_tokens: int, ratio: float) -> int:
    """Tokens of a ``demo_tokens``-long demonstration a prefixed rollout starts from: floor(ratio * n), < n."""
    return max(0, min(demo_tokens - 1, math.floor(ratio * demo_tokens)))


def demo_completion(prompt_ids: list[int], completion_ids: list[int], text: str, policy_version: int) -> Completion:
    """A demonstration as a sample: finished (it ends in eos), its sampler logprobs 0 (pi_expert = 1, as LUFFY)."""
    return Completion(
        prompt_ids=list(prompt_ids),
        completion_ids=list(completion_ids),
        logprobs=[0.0] * len(completion_ids),
        finish_reason="stop",
        text=text,
        policy_version=policy_version,
    )


def insert_demonstrations(
    groups: ScoredGroups, demos: list[Completion | None], demo_scores: list[float | None]
) -> tuple[ScoredGroups, torch.Tensor]:
    """Replace sample G-1 of each prompt that has a demonstration with it; (new groups, (N, G) bool off-policy).

    ``demos[i]`` is prompt i's demonstration (None: the group stays on-policy) and
    ``demo_scores[i]`` its reward. The record is a copy: ``groups`` is unchanged.
    """
    N, G = groups.scores.shape
    completions = list(groups.completions)
    scores = groups.scores.clone()
    off = torch.zeros((N, G), dtype=torch.bool)
    for i, (demo, score) in enumerate(zip(demos, demo_scores)):
        if demo is None:
            continue
        completions[i * G + G - 1] = demo
        scores[i, G - 1] = math.nan if score is None else score
        off[i, G - 1] = True
    out = ScoredGroups(
        groups.examples, completions, scores, groups.report, groups.policy_version, groups.gen_seconds,
        groups.prompts_too_long,
    )  # fmt: skip
    return out, off
