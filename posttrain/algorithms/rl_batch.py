"""From one iteration's scored groups to the tensors of a policy-gradient update.

``rl_rewards`` turns scores into rewards (the overlong penalty, optionally the KL in the
reward), ``advantages`` come from ``posttrain.algorithms.advantages.ADVANTAGES`` (then
``prompt_weighted``: scaled by a prompt weight the reward gave, HERO's), ``rl_batch`` keeps the groups that carry signal and lays the kept samples out as one
``TokenBatch`` whose per-token fields are the sampler's logprobs (``old_logprobs``),
the advantages and the aggregation weights, and ``minibatch_rows`` splits it into
sets of whole groups. Pure functions over ``posttrain.records.ScoredGroups``.
"""

from __future__ import annotations

import torch

from posttrain.algorithms.grpo import LOSS_WEIGHTS, uniform_groups
from posttrain.data.batch import TokenBatch, collate, per_token
from posttrain.records import ScoredGroups


def rl_rewards(groups: ScoredGroups, overlong: str, overlong_reward: float) -> torch.Tensor:
    """(N, G) rewards: the scores, with truncated samples given ``overlong_reward`` under overlong=penalty."""
    rewards = groups.scores.clone()
    if overlong == "penalty":
        rewards[groups.truncated & groups.scored] = overlong_reward
    return rewards


def prompt_weighted(advantages: torch.Tensor, groups: ScoredGroups) -> torch.Tensor:
    """(N, G) ``advantages`` times each prompt's weight from the reward; ``advantages`` itself when it gave none.

    ``reward.combine=hero``'s variance-aware weight (``posttrain.rewards.hero``) acts here, after the
    estimator, so a group's std normalisation cannot divide it out: under ``grpo.advantage=grpo``
    group i's advantages are w_i (r - mean_i) / (std_i + eps).
    """
    weights = groups.prompt_weights
    return advantages if weights is None else advantages * weights


def full_batch(groups: ScoredGroups, pad_id: int, rows: list[int] | None = None) -> TokenBatch:
    """The iteration's samples (``rows`` of them, default all), with their sampler logprobs (``old_logprobs``)."""
    cs = groups.completions if rows is None else [groups.completions[i] for i in rows]
    batch = collate([c.prompt_ids for c in cs], [c.completion_ids for c in cs], pad_id)
    width = batch.response_mask.shape[1]
    prompt_lens = [len(c.prompt_ids) for c in cs]
    batch.extra["old_logprobs"] = per_token([c.logprobs for c in cs], prompt_lens, width)
    if any(c.loss_mask is not None for c in cs):  # multi-turn: context tokens inside a completion do not train
        masks = [c.loss_mask if c.loss_mask is not None else [1.0] * len(c.completion_ids) for c in cs]
        batch.response_mask *= per_token(masks, prompt_lens, width)
    return batch


def kept_groups(rewards: torch.Tensor, scored: torch.Tensor, drop_uniform: bool) -> torch.Tensor:
    """(N,) bool: groups that enter the update. A group with a missing reward has no baseline."""
    keep = ~uniform_groups(rewards) if drop_uniform else torch.ones(len(rewards), dtype=torch.bool)
    return keep & scored.all(dim=1)


def rl_batch(
    groups: ScoredGroups,
    batch: TokenBatch | None,
    advantages: torch.Tensor,
    keep: torch.Tensor,
    *,
    overlong: str,
    loss_agg: str,
    max_len: int,
    pad_id: int = 0,
) -> TokenBatch | None:
    """The kept groups' rows with ``advantages``, ``weights`` and ``group`` per row; None if none.

    ``batch`` is every sample's (``full_batch``) when one was needed before the groups were
    chosen (the KL in the reward); without it only the kept rows are laid out, so a step
    that drops most groups does not pad and place the dropped ones.
    """
    G = groups.group_size
    rows = [i for i in range(len(groups.completions)) if keep[i // G]]
    if not rows:
        return None
    out = batch.select(rows) if batch is not None else full_batch(groups, pad_id, rows)
    if overlong == "mask":
        out.response_mask[groups.truncated.flatten()[rows]] = 0.0
    width = out.response_mask.shape[1]
    weights, _ = LOSS_WEIGHTS[loss_agg](out.response_mask, max_len)
    out.extra["advantages"] = advantages.flatten()[rows][:, None].expand(-1, width).contiguous()
    out.extra["weights"] = weights
    out.extra["group"] = torch.tensor([i // G for i in rows])
    return out


def minibatch_rows(batch: TokenBatch | None, minibatches: int) -> list[list[int]]:
    """Split rows into ``minibatches`` sets of whole groups; a set is empty when groups run out."""
    if batch is None:
        return [[] for _ in range(minibatches)]
    group_of = batch.extra["group"].tolist()
    groups = sorted(set(group_of))
    chunk_of = {g: i % minibatches for i, g in enumerate(groups)}
    out: list[list[int]] = [[] for _ in range(minibatches)]
    for row, g in enumerate(group_of):
        out[chunk_of[g]].append(row)
    return out
