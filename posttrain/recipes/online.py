"""The RL outer loop shared by GRPO and online DPO: draw prompts, sample, score, step, sync.

One iteration (``train.max_steps`` of them):

1. draw ``rollout.prompts_per_step`` training prompts, a pure function of the seed and
   the iteration (resume needs no data-loader state); under torchrun each rank takes
   every world-th one and samples with its own seed;
2. the sampler draws ``rollout.samples_per_prompt`` completions of each and the
   reward scores them (``posttrain.rollout.groups``): one ``ScoredGroups`` record;
3. the algorithm's step turns that record into optimiser steps and metrics records
   (``posttrain.recipes.grpo.GRPOStep``, ``posttrain.recipes.online_dpo.DPOStep``);
4. the sampler takes the trainer's weights before every ``rollout.sync_every``-th
   iteration (1: on-policy; s > 1: semi-online, "Bridging Offline and Online RL for
   LLMs", Lanchantin et al. 2025; 0: never), and the reference before every
   ``rollout.ref_sync_every``-th (0: the initial policy throughout).

Who holds the sampler's weights: an in-process engine samples from the policy itself
when it syncs every iteration (no copy, no sync), and from a copy of the policy
otherwise; an engine with its own copy (Ray, vLLM) receives the weights at each sync.
Every record a step writes carries the ``policy_version`` that sampled its batch.
With ``rollout.max_staleness`` >= 1 a producer thread samples iteration i + 1 while
iteration i trains (``posttrain.rollout.overlap``).

A checkpoint records the iteration each follower (sampler, reference) last synced at,
and its weights when they are neither the initial model's nor about to be replaced, so
resume continues with exactly the sampler and reference the uninterrupted run had.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.config import Config, RewardConfig
from posttrain.data.curriculum import TaskMix
from posttrain.data.tokenize import encode_prompt, fit_prompts
from posttrain.device import precision
from posttrain.errors import ConfigError, DataError, TrainingError
from posttrain.models.io import context_length, load_model
from posttrain.models.lora import is_lora, zero_adapters
from posttrain.recipes.launch import open_training
from posttrain.records import SamplingParams, ScoredGroups, ScoreReport
from posttrain.rewards.registry import build_reward
from posttrain.rollout.base import ENGINES
from posttrain.rollout.factory import build_engine, init_ray, policy_state, sync_engine
from posttrain.rollout.groups import sample_groups
from posttrain.rollout.overlap import Rollouts, check_overlap
from posttrain.seeds import derive_seed
from posttrain.tasks.base import Task
from posttrain.tasks.multi import MultiTask, build_multi_scorer
from posttrain.tasks.registry import make_task
from posttrain.train import distributed
from posttrain.train.checkpoint import load_trainer_state, save_checkpoint, save_final
from posttrain.train.loop import build_optimizer
from posttrain.train.metrics import MetricsWriter, console, progress, read_metrics
from posttrain.train.reference import reference_model


@dataclass
class Run:
    """What a step function trains with: the policy, its optimiser, the reference, the log."""

    cfg: Config
    model: PreTrainedModel  # the policy
    net: torch.nn.Module  # what training forwards go through: ``model``, or its DDP wrapper
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    writer: MetricsWriter
    reference: torch.nn.Module | None  # DPO's reference, GRPO's KL target; None when not needed


class Step(Protocol):
    """An RL algorithm on the shared loop: one iteration's scored groups -> updates and records."""

    stage: str  # the metrics' "stage" and the progress bar's name
    writer_key: str  # the metrics field a resume cuts metrics.jsonl back by
    doom_groups: bool  # one failed sample leaves its whole group out (GRPO), or only itself (DPO)
    needs_reference: bool

    def optimizer_steps(self, cfg: Config) -> int:
        """Optimiser steps per iteration, for the learning-rate schedule."""
        ...

    def __call__(self, run: Run, it: int, groups: ScoredGroups, rollout: dict[str, Any]) -> dict[str, Any]:
        """Update on ``groups``, write the iteration's records, return the last one."""
        ...


def should_sync(it: int, every: int) -> bool:
    """Does a follower synced every ``every`` iterations take the trainer's weights before iteration ``it``?"""
    return every > 0 and it > 0 and it % every == 0


def last_sync(it: int, every: int) -> int:
    """The iteration whose starting weights a follower synced every ``every`` iterations holds at ``it``."""
    return 0 if every == 0 else (it // every) * every


class Follower:
    """A frozen copy of the policy that takes the trainer's weights every ``every`` iterations.

    ``key`` names it in checkpoints (``<key>_step``, ``<key>``); the sampler's key,
    ``generator``, is the one checkpoints of earlier releases used.
    """

    def __init__(
        self,
        key: str,
        every: int,
        model: PreTrainedModel,
        initial: Callable[[], dict[str, torch.Tensor]],
        ahead: bool = False,
    ):
        # ahead: the sampler of overlapped rollouts, whose batch in flight at a checkpoint came from this copy
        self.key, self.every, self.ahead = key, every, ahead
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self._initial = initial

    def restore(self, extra: dict[str, Any], resumed: bool) -> None:
        """Fresh: the policy's weights (the initial ones). Resumed: the checkpoint's record of them."""
        if self.key in extra:
            self.module.load_state_dict(extra[self.key])
        elif resumed and extra.get(f"{self.key}_step", 0) == 0:
            self.module.load_state_dict(self._initial(), strict=False)
        # else: synced at the checkpoint's iteration, or about to be synced: the policy's weights

    def sync(self, it: int, model: PreTrainedModel) -> bool:
        if not should_sync(it, self.every):
            return False
        self.module.load_state_dict(model.state_dict(), strict=False)
        return True

    def checkpoint(self, next_it: int, in_flight: bool = False) -> dict[str, Any]:
        """What a resume needs to sample as this run would: the copy, unless the next iteration syncs it.

        ``in_flight``: a batch is in flight; one the sampler (``ahead``) drew from this copy is sampled
        again on resume, so the copy is kept although the next iteration syncs it.
        """
        synced_at = last_sync(next_it - 1, self.every)
        extra: dict[str, Any] = {f"{self.key}_step": synced_at}
        if synced_at > 0 and ((in_flight and self.ahead) or not should_sync(next_it, self.every)):
            extra[self.key] = self.module.state_dict()
        return extra


class EngineWeights:
    """The weights an engine that holds its own copy (Ray, vLLM) samples with, synced every ``every`` iterations.

    With checkpoints and a stale sampler (``every`` != 1) it keeps a host copy of what it
    last sent, so a checkpoint can record the sampler's weights as ``Follower`` does.
    """

    key = "generator"

    def __init__(
        self, engine: Any, every: int, keep: bool, initial: Callable[[], dict[str, torch.Tensor]], ahead: bool = False
    ):
        # ahead: overlapped rollouts, whose batch in flight at a checkpoint came from the weights last sent
        self.engine, self.every, self.keep, self._initial = engine, every, keep and (every != 1 or ahead), initial
        self.ahead = ahead
        self.state: dict[str, torch.Tensor] | None = None

    def restore(self, extra: dict[str, Any], resumed: bool, model: PreTrainedModel) -> None:
        """The engine was built with the policy's weights; resumed, it gets the ones it sampled with before."""
        state = None
        if self.key in extra:
            state = extra[self.key]
        elif resumed and self.every != 1 and extra.get(f"{self.key}_step", 0) == 0:
            state = self._initial()
        if state is not None:
            self.engine.sync_weights(state)
        if self.keep:
            self.state = state if state is not None else _snapshot(model)

    def sync(self, it: int, model: PreTrainedModel) -> bool:
        if not should_sync(it, self.every):
            return False
        sync_engine(self.engine, model)
        if self.keep:
            self.state = _snapshot(model)
        return True

    def checkpoint(self, next_it: int, in_flight: bool = False) -> dict[str, Any]:
        """As ``Follower.checkpoint``, from the host copy of what the engine was last sent."""
        synced_at = last_sync(next_it - 1, self.every)
        extra: dict[str, Any] = {f"{self.key}_step": synced_at}
        if (
            self.state is not None
            and synced_at > 0
            and ((in_flight and self.ahead) or not should_sync(next_it, self.every))
        ):
            extra[self.key] = self.state
        return extra


def _snapshot(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """A host copy of the policy's weights that later updates do not change (on a CPU, .cpu() aliases)."""
    return {k: v.clone() for k, v in policy_state(model).items()}


def initial_weights(cfg: Config, model: PreTrainedModel) -> Callable[[], dict[str, torch.Tensor]]:
    """The initial policy's weights, loaded only when a resumed follower needs them."""

    def load() -> dict[str, torch.Tensor]:
        if is_lora(model):  # lora_B = 0 computes the base: the initial policy
            view = copy.deepcopy(model)
            zero_adapters(view)
            return view.state_dict()
        assert cfg.model.path is not None
        return load_model(cfg.model.path, cfg.model.dtype, "cpu").state_dict()

    return load


def train_online(cfg: Config, step: Step, resume: bool = False) -> Path:
    """Train with ``step`` on the shared loop; write ``output_dir/{metrics.jsonl, checkpoints/, final/}``."""
    if cfg.sampling.adaptive != "off":  # the loop samples at sampling.temperature; a head would be silently unused
        raise ConfigError(
            f"sampling.adaptive={cfg.sampling.adaptive}: the RL loop samples at sampling.temperature; a temperature "
            "head samples in posttrain eval, generate and adaptive only: leave sampling.adaptive=off",
            field="sampling.adaptive",
        )
    (cfg, out, ckpt, tokenizer, model, _), net = open_training(cfg, resume)
    r = cfg.rollout
    distributed.check_divisible(r.prompts_per_step, "rollout.prompts_per_step")
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.train.max_steps * step.optimizer_steps(cfg))
    state = load_trainer_state(ckpt, optimizer, scheduler, model) if ckpt else {"step": 0}
    start: int = state["step"]
    extra: dict[str, Any] = dict(state.get("extra", {}))  # type: ignore[arg-type]
    task = make_task(cfg.data, tokenizer)  # the chat template, when the model has one
    mix = TaskMix(cfg, task, extra) if isinstance(task, MultiTask) else None  # data.tasks: mix, per-task metrics
    last: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:  # the engine and the scorer are closed also when the run fails
        stack.callback(getattr(step, "close", lambda: None))  # what a step holds itself (a remote teacher): last
        scorer = _open_scorer(cfg, task, stack)  # first: a reward that cannot load fails before any engine starts
        sampler, engine, reference, followers = _open_followers(cfg, step, model, tokenizer, stack, extra, ckpt)
        writer = MetricsWriter(out / "metrics.jsonl", resume_step=start if ckpt else None, key=step.writer_key)
        run = Run(cfg, model, net, tokenizer, optimizer, scheduler, writer, reference)
        with progress() as bar:
            bar_id = bar.add_task(step.stage, total=cfg.train.max_steps, completed=start, info="")
            rollouts = Rollouts(check_overlap(cfg, step))  # rollout.max_staleness >= 1: sample ahead
            stack.callback(rollouts.close)  # before the engine closes: a batch in flight still uses it
            if ckpt and rollouts.overlapped and 0 < start < cfg.train.max_steps:
                # resumed: the batch that was in flight at the checkpoint, from the weights it recorded
                rollouts.submit(start, functools.partial(draw_and_sample, cfg, start, run, task, engine, scorer,
                                                         step.doom_groups, policy_version=start - 1))  # fmt: skip
            pick = getattr(step, "sampler", None)  # a step may sample an iteration with another engine
            for it in range(start, cfg.train.max_steps):
                ahead = rollouts.take(it, it)  # the producer's batch, sampled while iteration it - 1 trained
                for f in followers:  # the sampler's weights (a copy, or the engine's own), the reference
                    f.sync(it, model)
                now = pick(run, it, engine) if pick is not None else engine  # (distill's teacher, Prefix-RFT)
                groups = ahead if ahead is not None else draw_and_sample(cfg, it, run, task, now, scorer,
                                                                          step.doom_groups)  # fmt: skip
                rollout = rollout_metrics(groups, step.stage, it)
                if mix is not None:  # per-task numbers, then the next iteration's mix (data.curriculum)
                    rollout.update(mix.observe(groups, scorer, distributed.all_sum))
                if rollouts.overlapped:
                    rollout.update(staleness=it - groups.policy_version, resampled=rollouts.resampled)
                    if it + 1 < cfg.train.max_steps:  # iteration it + 1 from version it, while this one trains
                        rollouts.submit(
                            it + 1,
                            functools.partial(
                                draw_and_sample,
                                cfg,
                                it + 1,
                                run,
                                task,
                                engine,
                                scorer,
                                step.doom_groups,
                                policy_version=it,
                            ),
                        )
                last = step(run, it, groups, rollout)
                bar.update(bar_id, advance=1, info=_progress_info(last))
                if cfg.train.save_every and (it + 1) % cfg.train.save_every == 0:
                    in_flight = rollouts.overlapped and it + 1 < cfg.train.max_steps
                    kept = {k: v for f in followers for k, v in f.checkpoint(it + 1, in_flight).items()}
                    kept.update(mix.checkpoint() if mix is not None else {})
                    save_checkpoint(
                        out / "checkpoints", it + 1, model, tokenizer, optimizer, scheduler, kept,
                        keep=cfg.train.keep_checkpoints,
                    )  # fmt: skip
        writer.close()
    final = save_final(model, tokenizer, out / "final")
    if last:
        console.print(
            f"{step.stage}: {cfg.train.max_steps} iterations (sync_every={r.sync_every}), "
            f"last reward {last['reward']:.3f} -> {final}"
        )
    if start < cfg.train.max_steps and not any(optimizer.state.values()):  # AdamW keeps state once it steps
        raise nothing_learned(cfg, step, read_metrics(out / "metrics.jsonl"), final)
    return final


# why online DPO found no pair in a prompt's samples (``posttrain.algorithms.pairs``), in words
PAIRLESS = {
    "all_correct": "every sample right",
    "all_wrong": "every sample wrong",
    "tie": "every sample the same reward",
    "unscored": "fewer than two samples scored",
}


def nothing_learned(cfg: Config, step: Step, records: list[dict[str, Any]], final: Path) -> TrainingError:
    """The one-line error of a run whose every iteration was skipped: what was skipped, and what to check."""
    its = {r[step.writer_key]: r for r in records if r.get("stage") == step.stage and step.writer_key in r}
    rows = list(its.values())  # one record per iteration (GRPO writes one per optimiser step)
    n, r = cfg.train.max_steps, cfg.rollout
    unscored = sum(int(x.get("unscored") or 0) for x in rows)
    samples = len(rows) * r.prompts_per_step * r.samples_per_prompt
    rewards = [float(x["reward"]) for x in rows if isinstance(x.get("reward"), (int, float))]
    mean = f"mean reward {sum(rewards) / len(rewards):.3g}; " if rewards else ""
    if step.stage == "grpo":
        dropped = round(sum(float(x.get("groups_dropped") or 0.0) for x in rows) * r.prompts_per_step)
        what = (f"{dropped} of {len(rows) * r.prompts_per_step} groups dropped (every sample the same reward, "
                f"or one unscored), {unscored} of {samples} samples unscored")  # fmt: skip
        keep = "; or keep uniform groups with grpo.drop_uniform_groups=false"
    else:
        skips = {k.removeprefix("skipped_"): sum(int(x.get(k) or 0) for x in rows)
                 for k in sorted({k for x in rows for k in x if k.startswith("skipped_")})}  # fmt: skip
        why = ", ".join(f"{v} with {PAIRLESS.get(k, k.replace('_', ' '))}" for k, v in skips.items() if v)
        what = f"no prompt gave a preference pair ({why or 'none sampled'}), {unscored} of {samples} samples unscored"
        keep = ""
    return TrainingError(
        f"{step.stage}: {n} iteration{'s' if n != 1 else ''} and not one optimiser update: {what}; {mean}"
        f"{final} is the starting model. "
        "Check that the reward can tell samples apart: the rows' gold answers (null, or not parseable by "
        "data.verifier / data.format), reward.components, and a model that sometimes answers right (SFT first)"
        f"{keep}"
    )


def _open_followers(
    cfg: Config,
    step: Step,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    stack: contextlib.ExitStack,
    extra: dict[str, Any],
    ckpt: Path | None,
) -> tuple[Follower | None, Any, torch.nn.Module | None, list[Follower | EngineWeights]]:
    """The sampler's copy (None: the policy itself or the engine's own), the engine, the reference, the followers."""
    r = cfg.rollout
    initial = initial_weights(cfg, model)
    in_process = ENGINES[cfg.engine.backend].in_process
    sampler = None
    if in_process and (r.sync_every != 1 or r.max_staleness > 0):  # overlapped: the producer samples a copy
        sampler = Follower("generator", r.sync_every, model, initial, ahead=r.max_staleness > 0)
        sampler.restore(extra, ckpt is not None)
    followers: list[Follower | EngineWeights] = [sampler] if sampler is not None else []
    reference: torch.nn.Module | None = None
    if step.needs_reference and r.ref_sync_every == 0:
        reference = reference_model(cfg, model)  # with LoRA: the policy, adapters off
    elif step.needs_reference and sampler is not None and r.ref_sync_every == r.sync_every:
        reference = sampler.module  # the reference follows the sampler: one copy serves both
    elif step.needs_reference:
        ref = Follower("reference", r.ref_sync_every, model, initial)
        ref.restore(extra, ckpt is not None)
        followers.append(ref)
        reference = ref.module
    assert cfg.model.path is not None  # open_stage resolved it
    engine = build_engine(cfg, sampler.module if sampler else model, tokenizer, cfg.model.path)
    stack.callback(engine.close)
    if not in_process:
        remote = EngineWeights(engine, r.sync_every, cfg.train.save_every > 0, initial, ahead=r.max_staleness > 0)
        remote.restore(extra, ckpt is not None, model)
        followers.insert(0, remote)
    return sampler, engine, reference, followers


def _open_scorer(cfg: Config, task: Task, stack: contextlib.ExitStack) -> Any:
    """The ``reward`` section as one scorer; its deadline pool on Ray actors with ``engine.backend=ray``."""
    ray = cfg.engine.backend == "ray"
    if ray:
        init_ray(cfg.engine)

    def build(reward: RewardConfig, task: Task) -> Any:
        return build_reward(reward, task, dtype=cfg.model.dtype, device=cfg.model.device,
                            backend="ray" if ray else "local", engine=cfg.engine.backend)  # fmt: skip

    if isinstance(task, MultiTask):  # data.tasks: each task's own reward section, else the run's
        rewards = {t.name: t.reward or cfg.reward for t in cfg.data.tasks}
        scorer = build_multi_scorer(task, rewards, build)
    else:
        scorer = build(cfg.reward, task)
    stack.callback(scorer.close)
    return scorer


def draw_and_sample(
    cfg: Config,
    it: int,
    run: Run,
    task: Task,
    engine: Any,
    scorer: Any,
    doom_groups: bool,
    policy_version: int | None = None,
) -> ScoredGroups:
    """This rank's share of iteration ``it``'s prompts, sampled and scored (by weights ``policy_version``)."""
    r, s = cfg.rollout, cfg.sampling
    drawn = task.examples("train", r.prompts_per_step, derive_seed(cfg.seed, it, 2))
    encoded = [encode_prompt(run.tokenizer, task.prompt(ex)) for ex in drawn]
    # every rank fits all of the iteration's prompts, so all agree on which (and how many) are skipped
    drawn, encoded, too_long = fit_prompts(drawn, encoded, s.max_new_tokens, context_length(run.model),
                                           cfg.data.truncation)  # fmt: skip
    if len(drawn) < distributed.world():
        raise DataError(
            f"iteration {it + 1}: {too_long} of {r.prompts_per_step} prompts have no room for "
            f"sampling.max_new_tokens={s.max_new_tokens} in the model's context, too few left to sample",
            field="data.truncation",
        )
    if too_long:
        console.print(f"iteration {it + 1}: skipped {too_long} prompts too long to sample (data.truncation)")
    examples, prompts = distributed.shard(drawn), distributed.shard(encoded)
    seed = derive_seed(cfg.seed, it, 3) + distributed.rank()  # each rank its own samples
    sampling = SamplingParams(s.temperature, s.top_p, s.top_k, s.max_new_tokens, seed=seed)
    with precision(run.model.device, cfg.train.mixed_precision), distributed.full_weights(run.model):
        groups = sample_groups(
            engine, scorer, examples, prompts, group_size=r.samples_per_prompt, sampling=sampling,
            policy_version=last_sync(it, r.sync_every) if policy_version is None else policy_version,
            doom_groups=doom_groups,
        )  # fmt: skip
    groups.prompts_too_long = too_long  # the groups an iteration skipped, for its metrics
    report = groups.report or ScoreReport([])
    if report.messages:
        console.print(
            f"{'grpo iteration' if doom_groups else 'dpo step'} {it + 1}: {report.errors} reward errors, "
            f"{report.timeouts} timeouts; left out of the update. First: {report.messages[0]}",
            markup=False,
        )
    return groups


def rollout_metrics(groups: ScoredGroups, stage: str, it: int) -> dict[str, Any]:
    """The iteration's sampling numbers, over every rank's samples under torchrun."""
    scored = groups.scores[groups.scored]
    report = groups.report or ScoreReport([])
    values = [float(v) for v in scored.double().tolist()]
    n_local = len(values)
    n, s1, s2, samples, tokens, trunc, errors, timeouts = distributed.all_sum(
        [n_local, sum(values), sum(v * v for v in values), len(groups.completions), groups.gen_tokens,
         float(groups.truncated.sum()), report.errors, report.timeouts]
    )  # fmt: skip
    seconds = distributed.all_max(groups.gen_seconds)
    totals = report.component_totals()
    names = sorted(totals)
    summed = distributed.all_sum([x for k in names for x in totals[k]] + [report.missing, report.unscored])
    components = {f"reward/{k}": summed[2 * i] / summed[2 * i + 1] if summed[2 * i + 1] else math.nan
                  for i, k in enumerate(names)}  # fmt: skip
    kept = sorted(report.counts)  # a component's own counts (a judge's): every rank has the same components
    counts = dict(zip(kept, distributed.all_sum([report.counts[k] for k in kept]))) if kept else {}
    if distributed.active():
        std = math.sqrt(max(0.0, (s2 - s1 * s1 / n) / (n - 1))) if n > 1 else math.nan
    else:  # one process: the float32 std of the scores, as logged before the shared loop
        std = float(scored.std()) if n_local > 1 else math.nan
    return {
        "stage": stage,
        "policy_version": groups.policy_version,
        "reward": s1 / n if n else math.nan,
        "reward_std": std,
        "reward_errors": int(errors),
        "reward_timeouts": int(timeouts),
        "reward_missing": int(summed[-2]),
        "prompts_too_long": groups.prompts_too_long,  # every rank fits all drawn prompts: already global
        "unscored": int(summed[-1]),
        **components,
        **counts,
        "truncated_frac": trunc / samples,
        "completion_len": tokens / samples,
        "gen_tokens_per_s": tokens / seconds if seconds > 0 else math.nan,
        "gen_seconds": seconds,
    }


def _progress_info(record: dict[str, Any]) -> str:
    info = f"reward {record['reward']:.3f}" + (f", pairs {record['pairs']}" if "pairs" in record else "")
    return info + (f", lr {record['lr']:.2e}" if isinstance(record.get("lr"), float) else "")
