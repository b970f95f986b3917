"""GRPO recipe: sample groups, score with the task's verifier, update, repeat.

One iteration (``train.max_steps`` of them):

1. take ``grpo.prompts_per_step`` training prompts (a pure function of seed and
   iteration, so resume needs no data-loader state);
2. sample ``grpo.samples_per_prompt`` completions of each with the batched
   sampler, which records each token's logprob: these are the old logprobs;
3. reward = the verifier's score (or a reward model's: ``grpo.reward``); truncated
   completions are masked, penalised or kept (``grpo.overlong``); advantages =
   reward minus group mean (/ std);
   groups with equal rewards are dropped (``grpo.drop_uniform_groups``);
4. ``grpo.updates_per_batch`` passes of ``grpo.minibatches`` optimiser steps
   each over the kept rollouts, with the clipped surrogate of
   ``posttrain.algorithms.grpo``.

The math lives in ``posttrain.algorithms.grpo``; this file is wiring only.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.algorithms.grpo import LOSS_WEIGHTS, group_advantages, grpo_loss, uniform_groups
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.algorithms.types import LossOutput
from posttrain.config import Config, GRPOConfig
from posttrain.data.batch import TokenBatch, collate, packed_micro_batches, per_token
from posttrain.data.tokenize import check_length, encode_prompt
from posttrain.models.io import context_length
from posttrain.recipes.common import derive_seed, make_task, reference_model
from posttrain.recipes.launch import open_training
from posttrain.rewards.pool import LocalScorer, Scorer, ScoreReport, build_scorer
from posttrain.rewards.scorers import REWARDS, verifier_reward
from posttrain.rollout.base import Completion, RolloutEngine, SamplingParams
from posttrain.rollout.factory import build_engine, sync_engine
from posttrain.tasks.base import Example, Task
from posttrain.train import distributed
from posttrain.train.checkpoint import load_trainer_state, save_checkpoint, save_final
from posttrain.train.device import precision
from posttrain.train.loop import build_optimizer, optimizer_step
from posttrain.train.metrics import MetricsWriter, console, progress


@dataclass
class Rollouts:
    """One iteration's scored samples, grouped: row i*G + j is sample j of prompt i."""

    completions: list[Completion]
    rewards: torch.Tensor  # (N, G) after overlong handling; NaN where the reward is missing
    raw_rewards: torch.Tensor  # (N, G) verifier scores; NaN where the reward raised or timed out
    truncated: torch.Tensor  # (N, G) bool
    report: ScoreReport | None = None  # the reward's failures: counts and first messages

    @property
    def scored(self) -> torch.Tensor:
        """(N, G) bool: samples with a reward. A missing one is never read as 0."""
        return ~self.raw_rewards.isnan()


def sample_rollouts(
    engine: RolloutEngine,
    task: Task,
    examples: list[Example],
    prompts: list[list[int]],
    cfg: GRPOConfig,
    sampling: SamplingParams,
    scorer: Scorer | None = None,
) -> Rollouts:
    """Sample G completions per prompt; reward = ``scorer``'s (default: the task's verifier, in process)."""
    G = cfg.samples_per_prompt
    completions = engine.generate([p for p in prompts for _ in range(G)], sampling)
    scorer = scorer or LocalScorer(verifier_reward(task, None, "float32"))
    # a failed sample dooms its group, so the group's remaining samples need not be scored
    rows = range(len(completions))
    report = scorer.score(
        [examples[i // G] for i in rows], [c.text for c in completions], groups=[i // G for i in rows]
    )
    scores = [math.nan if s is None else s for s in report.scores]
    raw = torch.tensor(scores, dtype=torch.float32).view(len(examples), G)
    truncated = torch.tensor([c.finish_reason == "length" for c in completions]).view(len(examples), G)
    rewards = raw.clone()
    if cfg.overlong == "penalty":
        rewards[truncated & ~raw.isnan()] = cfg.overlong_reward
    return Rollouts(completions, rewards, raw, truncated, report)


def reward_metrics(ro: Rollouts, it: int) -> dict[str, float]:
    """Reward mean and std over the scored samples only, and the count of each kind of failure.

    A failure is also printed (the first message), so that a verifier that breaks is
    seen while the run goes on, not discovered in the metrics afterwards.
    """
    scored = ro.raw_rewards[ro.scored]
    report = ro.report or ScoreReport([])
    if report.messages:
        console.print(
            f"grpo iteration {it + 1}: {report.errors} reward errors, {report.timeouts} timeouts; "
            f"their groups are left out. First: {report.messages[0]}",
            markup=False,
        )
    return {
        "reward": float(scored.mean()) if len(scored) else math.nan,
        "reward_std": float(scored.std()) if len(scored) > 1 else math.nan,
        "reward_errors": report.errors,
        "reward_timeouts": report.timeouts,
    }


def rollout_batch(ro: Rollouts, cfg: GRPOConfig, max_len: int, pad_id: int) -> tuple[TokenBatch | None, float]:
    """Kept rollouts as one TokenBatch with old logprobs, advantages and loss weights."""
    G = cfg.samples_per_prompt
    advantages = group_advantages(ro.rewards, cfg.std_normalize)
    keep_group = (
        ~uniform_groups(ro.rewards) if cfg.drop_uniform_groups else torch.ones(len(ro.rewards), dtype=torch.bool)
    )
    keep_group &= ro.scored.all(dim=1)  # a group with a missing reward has no baseline: it gets no loss
    dropped = 1.0 - float(keep_group.float().mean())
    rows = [i for i in range(len(ro.completions)) if keep_group[i // G]]
    if not rows:
        return None, dropped
    cs = [ro.completions[i] for i in rows]
    batch = collate([c.prompt_ids for c in cs], [c.completion_ids for c in cs], pad_id)
    width = batch.response_mask.shape[1]
    prompt_lens = [len(c.prompt_ids) for c in cs]
    if cfg.overlong == "mask":
        truncated = ro.truncated.flatten()[rows]
        batch.response_mask[truncated] = 0.0
    weights, _ = LOSS_WEIGHTS[cfg.loss_agg](batch.response_mask, max_len)
    batch.extra = {
        "old_logprobs": per_token([c.logprobs for c in cs], prompt_lens, width),
        "advantages": advantages.flatten()[rows][:, None].expand(-1, width).contiguous(),
        "weights": weights,
        "group": torch.tensor([i // G for i in rows]),
    }
    return batch, dropped


@torch.no_grad()
def add_ref_logprobs(ref: PreTrainedModel, batch: TokenBatch, temperature: float, chunk: int) -> None:
    rows = list(range(len(batch.input_ids)))
    parts = [
        token_logprobs(ref, batch.select(rows[s : s + chunk]).to(ref.device), temperature)[0].cpu()
        for s in range(0, len(rows), chunk)
    ]
    width = batch.response_mask.shape[1]
    batch.extra["ref_logprobs"] = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


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


def update_micro_batches(batch: TokenBatch | None, rows: list[int], cfg: Config) -> tuple[list[TokenBatch], float]:
    """One update's micro-batches (packed with ``train.packing``) and its loss normaliser.

    Under torchrun this rank may hold no rows: no micro-batches, and the loop pads it.
    """
    if batch is None or not rows:
        return [], 0.0
    mbs = cfg.train.micro_batch_size
    if cfg.train.packing:
        micro = packed_micro_batches(batch.select(rows), mbs)
    else:
        micro = [batch.select(rows[i : i + mbs]) for i in range(0, len(rows), mbs)]
    _, count = LOSS_WEIGHTS[cfg.grpo.loss_agg](batch.response_mask[rows], cfg.sampling.max_new_tokens)
    return micro, count


def global_rollout_metrics(ro: Rollouts, dropped: float, gen_tokens: int, gen_seconds: float) -> dict[str, float]:
    """Under torchrun, the iteration's rollout metrics over every rank's samples, as one process logs them.

    Each rank sampled its share of the prompts; sums (and sums of squares, for the
    reward's std) over ranks give the numbers of the whole batch.
    """
    scored = ro.raw_rewards[ro.scored].double()
    report = ro.report or ScoreReport([])
    n, s1, s2, groups, drops, trunc, samples, tokens, errors, timeouts = distributed.all_sum(
        [len(scored), float(scored.sum()), float((scored**2).sum()), len(ro.rewards), dropped * len(ro.rewards),
         float(ro.truncated.sum()), len(ro.completions), gen_tokens, report.errors, report.timeouts]
    )  # fmt: skip
    seconds = distributed.all_max(gen_seconds)
    return {
        "reward": s1 / n if n else math.nan,
        "reward_std": math.sqrt(max(0.0, (s2 - s1 * s1 / n) / (n - 1))) if n > 1 else math.nan,
        "reward_errors": int(errors),
        "reward_timeouts": int(timeouts),
        "groups_dropped": drops / groups,
        "truncated_frac": trunc / samples,
        "completion_len": tokens / samples,
        "gen_tokens_per_s": tokens / seconds,
        "gen_seconds": seconds,
    }


def train_grpo(cfg: Config, resume: bool = False) -> Path:
    """Train, write ``output_dir/{metrics.jsonl, checkpoints/, final/}``; return ``final``.

    Under torchrun each rank samples every world-th prompt of an iteration with its
    own seed (whole groups, so advantages stay within a rank) and the update and the
    logged numbers are summed over ranks.
    """
    (cfg, out, ckpt, tokenizer, model, _), net = open_training(cfg, resume)
    g = cfg.grpo
    distributed.check_divisible(g.prompts_per_step, "grpo.prompts_per_step")
    ref = reference_model(cfg, model) if g.kl_coef > 0 else None  # with LoRA: the policy, adapters off
    task = make_task(cfg.data)
    reward_fn = REWARDS[g.reward](task, g.reward_model_path, cfg.model.dtype)
    last: dict[str, float] = {}
    # the engine and the scorer are closed also when the run fails: no Ray actor outlives it
    with contextlib.ExitStack() as stack:
        scorer = build_scorer(cfg.rollout, reward_fn, pooled=g.reward == "verifier")
        stack.callback(scorer.close)
        assert cfg.model.path is not None  # open_stage resolved it
        engine = build_engine(cfg, model, tokenizer, cfg.model.path)
        stack.callback(engine.close)
        total_updates = cfg.train.max_steps * g.updates_per_batch * g.minibatches
        optimizer, scheduler = build_optimizer(model, cfg.optim, total_updates)
        start = load_trainer_state(ckpt, optimizer, scheduler, model)["step"] if ckpt else 0
        writer = MetricsWriter(out / "metrics.jsonl", resume_step=start if ckpt else None, key="iteration")
        ctx = context_length(model)
        pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
        with progress() as bar:
            task_id = bar.add_task("grpo", total=cfg.train.max_steps, completed=start, info="")
            for it in range(start, cfg.train.max_steps):
                last = grpo_iteration(
                    cfg, it, model, ref, tokenizer, task, engine, optimizer, scheduler, ctx, pad, writer, scorer, net
                )
                if it + 1 < cfg.train.max_steps:
                    sync_engine(engine, model)  # a no-op for the in-process engine, which samples from `model`
                bar.update(task_id, advance=1, info=f"reward {last['reward']:.3f}")
                if cfg.train.save_every and (it + 1) % cfg.train.save_every == 0:
                    save_checkpoint(out / "checkpoints", it + 1, model, tokenizer, optimizer, scheduler)
        writer.close()
    final = save_final(model, tokenizer, out / "final")
    if last:
        console.print(f"grpo: {cfg.train.max_steps} iterations, last reward {last['reward']:.3f} -> {final}")
    return final


def grpo_iteration(
    cfg: Config,
    it: int,
    model: PreTrainedModel,
    ref: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    engine: RolloutEngine,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    ctx: int | None,
    pad: int,
    writer: MetricsWriter,
    scorer: Scorer | None = None,
    net: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One iteration; ``net`` is what training forwards go through when it is not ``model`` (DDP)."""
    g, s = cfg.grpo, cfg.sampling
    t0 = time.perf_counter()
    examples = distributed.shard(task.examples("train", g.prompts_per_step, derive_seed(cfg.seed, it, 2)))
    prompts = [encode_prompt(tokenizer, task.prompt(ex)) for ex in examples]
    for ex, p in zip(examples, prompts):
        check_length(ex, len(p), s.max_new_tokens, ctx)
    seed = derive_seed(cfg.seed, it, 3) + distributed.rank()  # each rank its own samples
    sampling = SamplingParams(s.temperature, s.top_p, s.top_k, s.max_new_tokens, seed=seed)
    with precision(model.device, cfg.train.mixed_precision), distributed.full_weights(model):
        ro = sample_rollouts(engine, task, examples, prompts, g, sampling, scorer)
    gen_seconds = time.perf_counter() - t0
    gen_tokens = sum(len(c.completion_ids) for c in ro.completions)
    batch, dropped = rollout_batch(ro, g, s.max_new_tokens, pad)
    base: dict[str, Any] = {
        "stage": "grpo",
        "iteration": it + 1,
        **reward_metrics(ro, it),
        "groups_dropped": dropped,
        "truncated_frac": float(ro.truncated.float().mean()),
        "completion_len": gen_tokens / len(ro.completions),
        "gen_tokens_per_s": gen_tokens / gen_seconds,
        "gen_seconds": gen_seconds,
    }
    if distributed.active():
        base.update(global_rollout_metrics(ro, dropped, gen_tokens, gen_seconds))
    if batch is not None and ref is not None:
        # under FSDP with LoRA the reference is the sharded policy: ranks run unequal forwards
        with precision(model.device, cfg.train.mixed_precision), distributed.full_weights(model):
            add_ref_logprobs(ref, batch, s.temperature or 1.0, cfg.train.micro_batch_size)

    trained = model if net is None else net

    def loss_fn(mb: TokenBatch) -> LossOutput:
        mb = mb.to(model.device)
        with precision(model.device, cfg.train.mixed_precision):
            logprobs, entropy = token_logprobs(trained, mb, s.temperature or 1.0, with_entropy=True)
        return grpo_loss(
            logprobs, mb.extra["old_logprobs"], mb.extra["advantages"], mb.response_mask, mb.extra["weights"],
            g.clip_low, g.clip_high, mb.extra.get("ref_logprobs"), g.kl_coef, g.kl_estimator, entropy,
        )  # fmt: skip

    stats: dict[str, float] = {}
    chunks = minibatch_rows(batch, g.minibatches)
    for u in range(g.updates_per_batch * g.minibatches):
        step = it * g.updates_per_batch * g.minibatches + u + 1
        rows = chunks[u % g.minibatches]
        if not distributed.all_sum([len(rows)])[0]:  # no group with signal: no update, the schedule still advances
            with warnings.catch_warnings():  # torch warns when the scheduler steps without the optimiser
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
            writer.write({**base, "step": step, "loss": None, "skipped": True})
            continue
        micro, count = update_micro_batches(batch, rows, cfg)
        t1 = time.perf_counter()
        stats = optimizer_step(trained, optimizer, scheduler, micro, loss_fn, count, cfg.train.grad_clip)
        tokens = distributed.all_sum([sum(mb.num_tokens for mb in micro)])[0]
        writer.write({**base, "step": step, **stats, "tokens_per_s": tokens / (time.perf_counter() - t1)})
    return {**base, **stats}
