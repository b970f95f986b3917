"""GRPO and its variants as a step on the shared RL loop (``posttrain.recipes.online``).

Each iteration's scored groups (``rollout.samples_per_prompt`` samples of each of
``rollout.prompts_per_step`` prompts) become one update:

1. rewards = the scores, truncated samples masked, penalised or kept (``grpo.overlong``);
   with ``grpo.kl_in=reward`` minus ``grpo.kl_coef`` times each sample's k1 KL to the
   reference;
2. advantages from ``grpo.advantage`` (``posttrain.algorithms.advantages``), times the
   prompt weight a ``reward.combine=hero`` reward gives (``rl_batch.prompt_weighted``);
   groups with equal rewards are dropped (``grpo.drop_uniform_groups``), and so are
   groups with a missing reward;
3. ``grpo.updates_per_batch`` passes of ``grpo.minibatches`` optimiser steps each over
   the kept samples, with the policy loss ``grpo.policy_loss`` and, with
   ``grpo.kl_in=loss``, the KL term (``posttrain.algorithms.grpo.rl_loss``). The ratio
   is taken against the sampler's logprobs, so a stale sampler (``rollout.sync_every``
   > 1, semi-online) is corrected by importance weighting within the clip.

Opt-in teacher and expert terms (``grpo.kd_coef``, ``grpo.sft_coef``, ``grpo.luffy``,
``grpo.prefix_samples``: KDRL, CHORD, LUFFY, Prefix-RFT) come from
``posttrain.recipes.distill.RLMixing``; with them off the update is the one above.

The math lives in ``posttrain.algorithms``; this file is wiring only.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from posttrain.algorithms.advantages import ADVANTAGES
from posttrain.algorithms.grpo import LOSS_WEIGHTS, kl_reward_penalty, rl_loss
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.algorithms.rl_batch import (
    full_batch,
    kept_groups,
    minibatch_rows,
    prompt_weighted,
    rl_batch,
    rl_rewards,
)
from posttrain.algorithms.types import LossOutput, masked_sum
from posttrain.config import Config
from posttrain.data.batch import TokenBatch, sequence_ids
from posttrain.data.prefix import share
from posttrain.device import precision
from posttrain.recipes.distill import RLMixing, wants_mixing
from posttrain.recipes.online import Run, train_online
from posttrain.records import ScoredGroups
from posttrain.train import distributed
from posttrain.train.loop import optimizer_step


class GRPOStep:
    stage = "grpo"
    writer_key = "iteration"
    doom_groups = True  # a group with a missing reward has no baseline

    def __init__(self, cfg: Config) -> None:
        self.needs_reference = cfg.grpo.kl_coef > 0
        # KDRL, CHORD, LUFFY, Prefix-RFT (posttrain.recipes.distill); None: plain GRPO
        self.mix = RLMixing(cfg) if wants_mixing(cfg) else None
        # a sampler in another dtype (engine.dtype) with one optimiser step per batch: pi_old is the trainer
        # before that step, so the update's own forward gives it (detached), not an extra no-grad pass
        self.old_from_update = samples_in_other_dtype(cfg) and self.optimizer_steps(cfg) == 1 and self.mix is None

    def sampler(self, run: Run, it: int, engine: Any) -> Any:
        """The engine of iteration ``it``: the loop's, or Prefix-RFT's wrapper around it."""
        return engine if self.mix is None else self.mix.sampler(run, it, engine)

    def optimizer_steps(self, cfg: Config) -> int:
        return cfg.grpo.updates_per_batch * cfg.grpo.minibatches

    def close(self) -> None:
        """Release what the mixing terms hold (a remote teacher)."""
        if self.mix is not None:
            self.mix.close()

    def __call__(self, run: Run, it: int, groups: ScoredGroups, rollout: dict[str, Any]) -> dict[str, Any]:
        cfg, g = run.cfg, run.cfg.grpo
        pad = int(run.tokenizer.pad_token_id)  # type: ignore[arg-type]
        if self.mix is not None:  # LUFFY's demonstrations join the groups before the rewards are read
            groups, off_len = self.mix.prepare(run, groups)
        rewards = rl_rewards(groups, g.overlong, g.overlong_reward)
        batch = None  # every sample's tensors, only when the rewards need them before the groups are chosen
        extra: dict[str, float] = {}
        if g.kl_in == "reward" and run.reference is not None:
            batch = full_batch(groups, pad)
            add_ref_logprobs(run, batch)
            penalty = kl_reward_penalty(
                old_logprobs=batch.extra["old_logprobs"], ref_logprobs=batch.extra["ref_logprobs"],
                response_mask=batch.response_mask,
            ).view(rewards.shape)  # fmt: skip
            rewards = rewards - g.kl_coef * penalty
            extra["kl_penalty"] = float(penalty[groups.scored].mean()) if bool(groups.scored.any()) else 0.0
        keep = kept_groups(rewards, groups.scored, g.drop_uniform_groups)
        advantages = prompt_weighted(ADVANTAGES[g.advantage](rewards, all_sum=distributed.all_sum), groups)
        kept = rl_batch(groups, batch, advantages, keep, overlong=g.overlong, loss_agg=g.loss_agg,
                        max_len=cfg.sampling.max_new_tokens, pad_id=pad)  # fmt: skip
        if kept is not None and self.mix is not None:
            rows = [i for i in range(len(groups.completions)) if keep[i // groups.group_size]]
            self.mix.annotate(run, kept, rows, rewards, off_len, groups)
        if kept is not None and samples_in_other_dtype(cfg) and not self.old_from_update:
            extra.update(recompute_old_logprobs(run, kept))  # engine.dtype: the ratio compares the trainer with itself
        dropped = 1.0 - float(keep.float().mean())
        if distributed.active():
            n_groups, n_dropped = distributed.all_sum([len(keep), dropped * len(keep)])
            dropped = n_dropped / n_groups
        base = {**rollout, "iteration": it + 1, "groups_dropped": dropped, **extra}
        if kept is not None and run.reference is not None and g.kl_in == "loss":
            add_ref_logprobs(run, kept)
        return self.update(run, it, kept, base)

    def update(self, run: Run, it: int, batch: TokenBatch | None, base: dict[str, Any]) -> dict[str, Any]:
        """``updates_per_batch`` passes of ``minibatches`` optimiser steps; a step with no rows anywhere is skipped."""
        cfg, g = run.cfg, run.cfg.grpo
        stats: dict[str, float] = {}
        chunks = minibatch_rows(batch, g.minibatches)
        for u in range(g.updates_per_batch * g.minibatches):
            step = it * g.updates_per_batch * g.minibatches + u + 1
            rows = chunks[u % g.minibatches]
            if not distributed.all_sum([len(rows)])[0]:  # no group with signal: no update, the schedule advances
                with warnings.catch_warnings():  # torch warns when the scheduler steps without the optimiser
                    warnings.simplefilter("ignore", UserWarning)
                    run.scheduler.step()
                run.writer.write({**base, "step": step, "loss": None, "skipped": True})
                continue
            micro, count = update_micro_batches(batch, rows, cfg)
            if self.mix is not None:  # CHORD: this step's share of the demonstrations
                pad = int(run.tokenizer.pad_token_id)  # type: ignore[arg-type]
                micro = micro + self.mix.demo_micro_batches(u % g.minibatches, g.minibatches, count, pad)
            t1 = time.perf_counter()
            stats = optimizer_step(run.net, run.optimizer, run.scheduler, micro, self.loss_fn(run), count,
                                   cfg.train.grad_clip)  # fmt: skip
            tokens = distributed.all_sum([sum(mb.num_tokens for mb in micro)])[0]
            run.writer.write({**base, "step": step, **stats, "tokens_per_s": tokens / (time.perf_counter() - t1)})
        return {**base, **stats}

    def loss_fn(self, run: Run) -> Any:
        cfg, g, model = run.cfg, run.cfg.grpo, run.model
        temperature = cfg.sampling.temperature or 1.0

        def loss(mb: TokenBatch) -> LossOutput:
            mb = mb.to(model.device)
            with precision(model.device, cfg.train.mixed_precision):
                logprobs, entropy = token_logprobs(
                    run.net, mb, temperature, with_entropy=True, entropy_grad=g.entropy_coef > 0,
                    chunk=cfg.train.logits_chunk,
                )  # fmt: skip
            if self.mix is not None and "sft_scale" in mb.extra:  # a CHORD demonstration micro-batch
                return self.mix.sft_loss(mb, logprobs)
            rl = mb if self.mix is None else self.mix.on_policy(mb)  # off-policy tokens: LUFFY's term instead
            old = logprobs.detach() if self.old_from_update else mb.extra["old_logprobs"]
            out = rl_loss(
                policy_loss=g.policy_loss, logprobs=logprobs, old_logprobs=old,
                advantages=mb.extra["advantages"], response_mask=rl.response_mask, weights=rl.extra["weights"],
                seq_ids=sequence_ids(mb) if g.policy_loss == "gspo" else None,
                clip_low=g.clip_low, clip_high=g.clip_high, gspo_clip_low=g.gspo_clip_low,
                gspo_clip_high=g.gspo_clip_high, ref_logprobs=mb.extra.get("ref_logprobs"),
                kl_coef=g.kl_coef if g.kl_in == "loss" else 0.0, kl_estimator=g.kl_estimator,
                entropy=entropy, entropy_coef=g.entropy_coef,
            )  # fmt: skip
            if self.old_from_update:  # what recompute_old_logprobs reports, from this forward
                sampler, mask = mb.extra["old_logprobs"], mb.response_mask
                out.metrics["sampler_logprob_gap"] = (masked_sum((sampler - old).abs(), mask), float(mask.sum()))
            return out if self.mix is None else self.mix.add_terms(out, mb, logprobs)

        return loss


@torch.no_grad()
def add_ref_logprobs(run: Run, batch: TokenBatch) -> None:
    """The reference's logprobs of every row, as the per-token field ``ref_logprobs``."""
    assert run.reference is not None
    batch.extra["ref_logprobs"] = rowwise_logprobs(run, run.reference, batch)


def samples_in_other_dtype(cfg: Config) -> bool:
    """The torch engine samples from a copy in another dtype than the trainer's (``engine.dtype``)."""
    return cfg.engine.backend == "torch" and cfg.engine.dtype not in ("auto", cfg.model.dtype)


@torch.no_grad()
def recompute_old_logprobs(run: Run, batch: TokenBatch) -> dict[str, float]:
    """The trainer's own logprobs become ``old_logprobs``; the sampler's mean gap to them is returned.

    Used when a batch makes more than one optimiser step; with one, the step's own forward
    gives the same values (``GRPOStep.old_from_update``).

    The importance ratio pi_theta / pi_old (PPO, Schulman et al. 2017, eq. 6) must
    compare the policy with itself: sampled in bf16 (``engine.dtype=bfloat16``), the
    sampler's logprobs carry bf16 rounding that is no policy change, and clipping
    would act on it. Recomputing pi_old with the trainer (in eval mode, as the
    policy that sampled, without dropout) makes the first update's ratio exactly 1,
    as with an fp32 sampler, at the cost of one no-grad forward per iteration.
    """
    sampler, mask = batch.extra["old_logprobs"], batch.response_mask
    was_training = run.model.training
    run.model.eval()
    try:
        mine = rowwise_logprobs(run, run.model, batch) * mask
    finally:
        run.model.train(was_training)
    batch.extra["old_logprobs"] = mine
    gap = float(((sampler - mine).abs() * mask).sum()) / max(float(mask.sum()), 1.0)
    return {"sampler_logprob_gap": gap}


@torch.no_grad()
def rowwise_logprobs(run: Run, model: Any, batch: TokenBatch) -> torch.Tensor:
    """(B, T-1) logprobs of every row of ``batch`` under ``model``, micro-batch by micro-batch, on the CPU."""
    ref, cfg = model, run.cfg
    temperature = cfg.sampling.temperature or 1.0
    micro = micro_batches(batch, list(range(len(batch.input_ids))), cfg)  # as in the update
    # under FSDP with LoRA the reference is the sharded policy: ranks run unequal forwards
    with precision(run.model.device, cfg.train.mixed_precision), distributed.full_weights(run.model):
        parts = [
            token_logprobs(ref, mb.to(run.model.device), temperature, chunk=cfg.train.logits_chunk)[0].cpu()
            for mb in micro
        ]
    width = batch.response_mask.shape[1]
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


def update_micro_batches(batch: TokenBatch | None, rows: list[int], cfg: Config) -> tuple[list[TokenBatch], float]:
    """One update's micro-batches and its loss normaliser.

    With ``train.packing`` each micro-batch's samples of one prompt share a row and the prompt
    (``posttrain.data.prefix.share``): a group of G samples computes its prompt once, not G times.

    Under torchrun this rank may hold no rows: no micro-batches, and the loop pads it.
    """
    if batch is None or not rows:
        return [], 0.0
    _, count = LOSS_WEIGHTS[cfg.grpo.loss_agg](batch.response_mask[rows], cfg.sampling.max_new_tokens)
    return micro_batches(batch, rows, cfg), count


def micro_batches(batch: TokenBatch, rows: list[int], cfg: Config) -> list[TokenBatch]:
    """``rows`` of ``batch`` in ``train.micro_batch_size`` slices, each prompt shared with ``train.packing``."""
    mbs = cfg.train.micro_batch_size
    micro = [batch.select(rows[i : i + mbs]) for i in range(0, len(rows), mbs)]
    return [share(mb) for mb in micro] if cfg.train.packing else micro


def train_grpo(cfg: Config, resume: bool = False) -> Path:
    """Train, write ``output_dir/{metrics.jsonl, checkpoints/, final/}``; return ``final``.

    Under torchrun each rank samples every world-th prompt of an iteration with its
    own seed (whole groups, so group advantages stay within a rank) and the update and
    the logged numbers are summed over ranks.
    """
    return train_online(cfg, GRPOStep(cfg), resume)
