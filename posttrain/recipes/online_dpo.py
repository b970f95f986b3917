"""Online and semi-online DPO: the policy samples its own pairs, from a generator synced every s steps.

After "Bridging Offline and Online Reinforcement Learning for LLMs" (Lanchantin et
al. 2025, arXiv 2506.21495). One optimiser step (``train.max_steps`` of them):

1. take ``rollout.prompts_per_step`` training prompts (a pure function of seed and
   step, so resume needs no data-loader state);
2. the generator samples ``rollout.samples_per_prompt`` responses of each; the
   reward function (``rollout.scorer``: the task's verifier or a reward model)
   scores them;
3. ``rollout.pairs`` turns each prompt's scores into pairs
   (``posttrain.algorithms.pairs``); prompts without a preference are skipped and
   counted;
4. one DPO step on those pairs (``posttrain.algorithms.dpo``), normalised by the
   step's pair weight.

The generator is a separate copy of the policy (a ``TorchEngine`` over a deepcopy;
with ``rollout.backend=ray``, Ray workers that receive that copy's weights at each sync).
Its weights are synced from the trainer before the step that follows every
``rollout.sync_every``-th optimiser step: s = 1 is online DPO (every batch is
sampled by the current policy); s > 1 is semi-online; s = 0 never syncs, which is
offline DPO on the initial policy's samples, drawn lazily.

A reward that raises or times out (``posttrain.rewards.pool``) leaves its sample
out of every pair: it is counted (``reward_errors``, ``reward_timeouts``), never scored 0.

The reference (``rollout.reference``): ``fixed`` is the initial policy throughout;
``synced`` is the generator itself, so it moves to the trainer's weights at every
sync. The paper reports that verifiable online DPO without reference sync collapsed
in length on their models; both are offered, ``fixed`` being the DPO default.

A checkpoint records the step the generator was last synced at, and the
generator's weights when they are neither the initial model's nor the checkpoint's
own, so resume continues with exactly the generator the uninterrupted run had.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.algorithms.dpo import REFERENCE_FREE, sequence_logprobs
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.algorithms.pairs import build_pairs
from posttrain.config import Config
from posttrain.data.pairs import PairBatch, collate_pairs
from posttrain.data.tokenize import check_length, encode_prompt
from posttrain.errors import ConfigError
from posttrain.models.io import context_length, load_model
from posttrain.models.lora import is_lora, zero_adapters
from posttrain.recipes.common import derive_seed, make_task, reference_model
from posttrain.recipes.dpo import dpo_loss_fn
from posttrain.recipes.launch import open_training
from posttrain.rewards.pool import Scorer, build_scorer
from posttrain.rewards.scorers import REWARDS
from posttrain.rollout.base import RolloutEngine, SamplingParams
from posttrain.rollout.factory import build_engine, sync_engine
from posttrain.tasks.base import Task
from posttrain.train import distributed
from posttrain.train.checkpoint import load_trainer_state, save_checkpoint, save_final
from posttrain.train.device import precision
from posttrain.train.loop import build_optimizer, optimizer_step
from posttrain.train.metrics import MetricsWriter, console, progress


def should_sync(step: int, sync_every: int) -> bool:
    """Sync the generator before optimiser step ``step`` (0-based)? After every ``sync_every``-th step."""
    return sync_every > 0 and step > 0 and step % sync_every == 0


def last_sync(step: int, sync_every: int) -> int:
    """The optimiser step whose weights the generator holds when step ``step`` samples."""
    return 0 if sync_every == 0 else (step // sync_every) * sync_every


@torch.no_grad()
def add_reference(ref: PreTrainedModel, batches: list[PairBatch], mixed_precision: str) -> None:
    for mb in batches:
        tokens = mb.tokens.to(ref.device)
        with precision(ref.device, mixed_precision):
            logprobs, _ = token_logprobs(ref, tokens)
        mb.ref_logps = sequence_logprobs(logprobs, tokens.response_mask)[0]


def scored_pairs(
    rule: str, scores: list[float | None], G: int, rng: random.Random
) -> tuple[list[tuple[int, int, float]], dict[str, int]]:
    """Pairs ``(chosen row, rejected row, weight)`` among the samples that have a reward.

    A sample whose reward raised or timed out takes part in no pair: it is neither
    better nor worse than any other. A prompt left with fewer than two scored samples
    is skipped as ``unscored``. With every sample scored this is ``build_pairs`` itself.
    """
    kept = [[(i + j, s) for j, s in enumerate(scores[i : i + G]) if s is not None] for i in range(0, len(scores), G)]
    usable = [k for k in kept if len(k) >= 2]
    pairset = build_pairs(rule, [[s for _, s in k] for k in usable], rng)
    pairs = [(usable[i][p.chosen][0], usable[i][p.rejected][0], p.weight) for i, p in pairset.pairs]
    return pairs, {**pairset.skipped, "unscored": len(kept) - len(usable)}


def _generator(cfg: Config, model: PreTrainedModel, ckpt: Path | None, state: dict[str, Any]) -> PreTrainedModel:
    """A copy of the policy holding the weights the generator had when the checkpoint was taken.

    Fresh, that is the policy itself. Resumed, it is the weights the checkpoint saved, or
    the initial model's when it was never synced; at a sync step the loop syncs it anyway.
    """
    generator = copy.deepcopy(model)
    generator.requires_grad_(False)
    extra = state.get("extra", {})
    if "generator" in extra:
        generator.load_state_dict(extra["generator"])
    elif ckpt is not None and extra.get("generator_step", 0) == 0 and is_lora(generator):
        zero_adapters(generator)  # lora_B = 0 computes the base: the initial policy
    elif ckpt is not None and extra.get("generator_step", 0) == 0:
        generator.load_state_dict(load_model(cfg.model.path, cfg.model.dtype, "cpu").state_dict())  # type: ignore[arg-type]
    return generator.eval()


def train_online_dpo(cfg: Config, resume: bool = False) -> Path:
    """Train, write ``output_dir/{metrics.jsonl, checkpoints/, final/}``; return ``final``.

    Under torchrun (DDP only: the generator is a whole copy of the policy) each rank
    samples every world-th prompt with its own seed and builds pairs within its
    prompts; the step and the logged numbers are summed over ranks.
    """
    (cfg, out, ckpt, tokenizer, model, _), net = open_training(cfg, resume)
    r = cfg.rollout
    assert r is not None
    if distributed.active() and cfg.dist.strategy == "fsdp":
        raise ConfigError("online DPO keeps a whole generator copy: use dist.strategy=ddp", field="dist.strategy")
    distributed.check_divisible(r.prompts_per_step, "rollout.prompts_per_step")
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.train.max_steps)
    state = load_trainer_state(ckpt, optimizer, scheduler, model) if ckpt else {"step": 0}
    start = state["step"]
    # the generator's weights live here (the synced reference, the checkpoint); a Ray engine holds copies
    generator = _generator(cfg, model, ckpt, state)
    assert cfg.model.path is not None  # open_stage resolved it
    ref = None
    if cfg.dpo.loss not in REFERENCE_FREE:
        fixed = r.reference == "fixed"
        ref = reference_model(cfg, model) if fixed else generator  # with LoRA: the policy, adapters off
        ref.requires_grad_(False)
    task = make_task(cfg.data)
    reward_fn = REWARDS[r.scorer](task, r.reward_model_path, cfg.model.dtype)
    last: dict[str, Any] = {}
    # the engine and the scorer are closed also when the run fails: no Ray actor outlives it
    with contextlib.ExitStack() as stack:
        engine = build_engine(cfg, generator, tokenizer, cfg.model.path)
        stack.callback(engine.close)
        scorer = build_scorer(r, reward_fn, pooled=r.scorer == "verifier")
        stack.callback(scorer.close)
        writer = MetricsWriter(out / "metrics.jsonl", resume_step=start if ckpt else None)
        with progress() as bar:
            task_id = bar.add_task("dpo", total=cfg.train.max_steps, completed=start, info="")
            for step in range(start, cfg.train.max_steps):
                if should_sync(step, r.sync_every):
                    generator.load_state_dict(model.state_dict(), strict=False)
                    sync_engine(engine, generator)  # a no-op when the engine samples from `generator` itself
                last = online_step(
                    cfg, step, model, ref, tokenizer, task, engine, scorer, optimizer, scheduler, writer, net
                )
                bar.update(task_id, advance=1, info=f"reward {last['reward']:.3f}, pairs {last['pairs']}")
                if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0:
                    synced_at = last_sync(step, r.sync_every)
                    extra: dict[str, Any] = {"generator_step": synced_at}
                    if synced_at > 0 and not should_sync(step + 1, r.sync_every):
                        extra["generator"] = generator.state_dict()
                    save_checkpoint(out / "checkpoints", step + 1, model, tokenizer, optimizer, scheduler, extra)
        writer.close()
    final = save_final(model, tokenizer, out / "final")
    if last:
        console.print(f"dpo (sync_every={r.sync_every}): {cfg.train.max_steps} steps, last reward {last['reward']:.3f}")
    return final


def online_step(
    cfg: Config,
    step: int,
    model: PreTrainedModel,
    ref: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    engine: RolloutEngine,
    scorer: Scorer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    writer: MetricsWriter,
    net: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """One step; ``net`` is what the training forward goes through when it is not ``model`` (DDP)."""
    r, s = cfg.rollout, cfg.sampling
    assert r is not None
    examples = distributed.shard(task.examples("train", r.prompts_per_step, derive_seed(cfg.seed, step, 2)))
    prompts = [encode_prompt(tokenizer, task.prompt(ex)) for ex in examples]
    for ex, p in zip(examples, prompts):
        check_length(ex, len(p), s.max_new_tokens, context_length(model))
    G = r.samples_per_prompt
    seed = derive_seed(cfg.seed, step, 3) + distributed.rank()  # each rank its own samples
    sampling = SamplingParams(s.temperature, s.top_p, s.top_k, s.max_new_tokens, seed=seed)
    t0 = time.perf_counter()
    with precision(model.device, cfg.train.mixed_precision):
        completions = engine.generate([p for p in prompts for _ in range(G)], sampling)
    gen_seconds = time.perf_counter() - t0
    report = scorer.score([examples[i // G] for i in range(len(completions))], [c.text for c in completions])
    if report.messages:
        console.print(f"dpo step {step + 1}: reward failures left out of pairs: {report.messages[0]}", markup=False)
    rng = random.Random(derive_seed(cfg.seed, step, 6) + distributed.rank())
    pairs, skipped = scored_pairs(r.pairs, report.scores, G, rng)
    scores = [x for x in report.scores if x is not None]
    gen_tokens = sum(len(c.completion_ids) for c in completions)
    record: dict[str, Any] = {
        "stage": "dpo",
        "step": step + 1,
        "generator_step": last_sync(step, r.sync_every),
        "reward": sum(scores) / len(scores) if scores else math.nan,
        "reward_errors": report.errors,
        "reward_timeouts": report.timeouts,
        "pairs": len(pairs),
        **{f"skipped_{k}": v for k, v in skipped.items()},
        "completion_len": gen_tokens / len(completions),
        "truncated_frac": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "gen_tokens_per_s": gen_tokens / gen_seconds,
    }
    if distributed.active():
        record.update(_over_ranks(record, scores, completions, gen_tokens, gen_seconds))
    if not record["pairs"]:  # no prompt with a preference: no update, the schedule still advances
        with warnings.catch_warnings():  # torch warns when the scheduler steps without the optimiser
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        writer.write({**record, "loss": None, "skipped": True})
        return record
    sequences = [(c.prompt_ids, c.completion_ids) for c in completions]
    mbs = cfg.train.micro_batch_size
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)  # type: ignore[arg-type]
    micro = [collate_pairs(sequences, pairs[i : i + mbs], pad) for i in range(0, len(pairs), mbs)]
    if ref is not None:
        add_reference(ref, micro, cfg.train.mixed_precision)
    loss_fn = dpo_loss_fn(model, cfg.dpo, cfg.train.mixed_precision, net)
    count = sum(w for _, _, w in pairs)
    trained = model if net is None else net
    stats = optimizer_step(trained, optimizer, scheduler, micro, loss_fn, count, cfg.train.grad_clip)
    record.update(stats)
    writer.write(record)
    return record


def _over_ranks(
    record: dict[str, Any], scores: list[float], completions: list[Any], gen_tokens: int, gen_seconds: float
) -> dict[str, Any]:
    """Under torchrun, the step's sampling numbers over every rank's prompts, as one process logs them."""
    keys = ["pairs", "reward_errors", "reward_timeouts", *sorted(k for k in record if k.startswith("skipped_"))]
    truncated = sum(c.finish_reason == "length" for c in completions)
    n, total, samples, tokens, trunc, *counts = distributed.all_sum(
        [len(scores), sum(scores), len(completions), gen_tokens, truncated, *(record[k] for k in keys)]
    )
    seconds = distributed.all_max(gen_seconds)
    return {
        "reward": total / n if n else math.nan,
        **{k: int(v) for k, v in zip(keys, counts)},
        "completion_len": tokens / samples,
        "truncated_frac": trunc / samples,
        "gen_tokens_per_s": tokens / seconds,
    }
