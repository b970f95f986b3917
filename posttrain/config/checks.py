"""The checks of a config that involve more than one value: sizes that must divide, ranges, combinations.

``posttrain.config.build`` checks each key and its type as a mapping is read; ``validate``
runs on the built ``Config`` and names the file, line and field of the first value that
cannot work (``ConfigError``), so a bad setting stops a run before anything loads.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable
from typing import Any

from posttrain.config.build import Source, build
from posttrain.config.reward import validate_reward
from posttrain.config.sections import (
    Config,
    DataConfig,
    DatagenConfig,
    OptimConfig,
)
from posttrain.errors import ConfigError


def validate(cfg: Config, src: Source | None = None) -> None:
    """Checks that involve more than one value: sizes that must divide, ranges."""
    src = src or Source()

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            file, line = src.where(key)
            raise ConfigError(message, file=file, line=line, field=key)

    for key, value in _floats(cfg, ""):  # a config built in code skips _coerce's check
        need(math.isfinite(value), key, f"must be a finite number, got {value!r}")
    t, s, e, o = cfg.train, cfg.sampling, cfg.eval, cfg.optim
    need(t.max_steps >= 0, "train.max_steps", "must be >= 0")
    need(t.batch_size > 0, "train.batch_size", "must be > 0")
    need(t.micro_batch_size > 0, "train.micro_batch_size", "must be > 0")
    need(t.grad_clip >= 0, "train.grad_clip", "must be >= 0")
    need(t.save_every >= 0, "train.save_every", "must be >= 0 (0 saves only at the end)")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1 (resume needs the newest)")
    need(t.logits_chunk >= 0, "train.logits_chunk", "must be >= 0 tokens (0: the full logits)")
    _validate_optim(o, need)
    need(cfg.logging.plain_every_s > 0, "logging.plain_every_s", "must be > 0 seconds")
    _validate_model(cfg, need)
    _validate_rl(cfg, need)
    for key, sc in (("sampling", s), ("eval.sampling", e.sampling)):
        need(sc.temperature >= 0, f"{key}.temperature", "must be >= 0 (0 is greedy)")
        need(0 < sc.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")
        need(sc.max_new_tokens > 0, f"{key}.max_new_tokens", "must be > 0")
    need(s.top_k >= 0, "sampling.top_k", "must be >= 0")
    need(e.sampling.top_k >= 0, "eval.sampling.top_k", "must be >= 0")
    need(e.samples_per_problem > 0, "eval.samples_per_problem", "must be > 0")
    need(e.num_problems >= 0, "eval.num_problems", "must be >= 0 (0: every problem of the file)")
    _validate_data(cfg, need)
    _validate_eval_and_sft_data(cfg, need)
    _validate_aggregation(cfg, need)
    _validate_preferences(cfg, src, need)
    _validate_scale(cfg, need)
    validate_reward(cfg.reward, need)
    _validate_tasks(cfg.data, need)
    _validate_distill(cfg, need)
    _validate_datagen(cfg.datagen, need)
    _validate_adaptive(cfg, need)


def _validate_rl(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    """The RL iteration's sizes and cadences (rollout) and GRPO's update."""
    r, g = cfg.rollout, cfg.grpo
    need(r.prompts_per_step > 0, "rollout.prompts_per_step", "must be > 0")
    need(r.samples_per_prompt >= 2, "rollout.samples_per_prompt", "needs at least 2 samples: a group baseline, a pair")
    need(r.sync_every >= 0, "rollout.sync_every", "must be >= 0 (0 never syncs: offline)")
    need(r.ref_sync_every >= 0, "rollout.ref_sync_every", "must be >= 0 (0 keeps the initial policy)")
    _validate_staleness(cfg, need)
    need(g.minibatches > 0, "grpo.minibatches", "must be > 0")
    need(g.updates_per_batch > 0, "grpo.updates_per_batch", "must be > 0")
    need(
        r.prompts_per_step % g.minibatches == 0,
        "grpo.minibatches",
        f"must divide rollout.prompts_per_step ({r.prompts_per_step}) so each minibatch holds whole groups",
    )
    need(0 < g.clip_low <= 1, "grpo.clip_low", "must be in (0, 1] (1: no lower clip, as CISPO uses)")
    need(g.clip_high > 0, "grpo.clip_high", "must be > 0")
    need(g.kl_coef >= 0, "grpo.kl_coef", "must be >= 0")
    need(g.entropy_coef >= 0, "grpo.entropy_coef", "must be >= 0")
    need(g.gspo_clip_low > 0 and g.gspo_clip_high > 0, "grpo.gspo_clip_low", "the GSPO clip range must be > 0")
    need(
        g.kl_in != "reward" or g.kl_estimator == "k1",
        "grpo.kl_estimator",
        "a KL in the reward is the k1 estimate per sequence: use grpo.kl_estimator=k1 with grpo.kl_in=reward",
    )


def _validate_data(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    """The built-in task's knobs, and what the jsonl and judge tasks need to read."""
    a = cfg.data.arithmetic
    need(a.num_operands >= 2, "data.arithmetic.num_operands", "must be >= 2")
    need(1 <= a.digits <= 6, "data.arithmetic.digits", "must be in [1, 6]")
    need(
        bool(a.operators) and set(a.operators) <= set("+-*"),
        "data.arithmetic.operators",
        "must be a non-empty string of + - *",
    )
    need(0 < a.test_fraction < 1, "data.arithmetic.test_fraction", "must be in (0, 1)")
    need(0 <= cfg.data.heldout_fraction < 1, "data.heldout_fraction", "must be in [0, 1)")
    need(0 <= a.direct_fraction <= 1, "data.arithmetic.direct_fraction", "must be in [0, 1]")
    need(
        cfg.data.task != "jsonl" or cfg.data.path is not None,
        "data.path",
        "the jsonl task needs data.path",
    )
    need(
        cfg.data.task != "judge" or cfg.data.judge.source != "preferences" or cfg.data.path is not None,
        "data.path",
        "the judge task with data.judge.source=preferences needs data.path: {prompt, chosen, rejected} rows",
    )
    j = cfg.data.judge
    need(
        cfg.data.task != "judge" or j.source != "sampled" or j.sample_from is not None,
        "data.judge.sample_from",
        "data.judge.source=sampled needs the model to sample from (a directory)",
    )
    need(j.samples_per_problem >= 2, "data.judge.samples_per_problem", "must be >= 2: a correct and an incorrect")
    need(j.problems > 0, "data.judge.problems", "must be > 0")
    need(j.ste_iterations > 0, "data.judge.ste_iterations", "must be > 0")
    need(j.ste_instructions > 0, "data.judge.ste_instructions", "must be > 0")
    need(j.ste_judgments > 0, "data.judge.ste_judgments", "must be > 0")


def _validate_distill(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    """The teacher's and the SFT-RL mixing keys' ranges; the teacher's directory is checked when it loads."""
    g, d = cfg.grpo, cfg.distill
    need(g.kd_coef >= 0, "grpo.kd_coef", "must be >= 0 (0: no KD term)")
    need(g.sft_coef >= 0 and g.sft_coef <= 1, "grpo.sft_coef", "CHORD's mu must be in [0, 1]")
    need(g.sft_coef_end >= 0 and g.sft_coef_end <= 1, "grpo.sft_coef_end", "CHORD's mu must be in [0, 1]")
    need(g.luffy_gamma > 0, "grpo.luffy_gamma", "must be > 0")
    need(0 <= g.prefix_samples < cfg.rollout.samples_per_prompt, "grpo.prefix_samples",
         f"must be in [0, rollout.samples_per_prompt={cfg.rollout.samples_per_prompt}): a group keeps "
         "one rollout of its own")  # fmt: skip
    need(0 < g.prefix_ratio < 1, "grpo.prefix_ratio", "must be in (0, 1)")
    need(0 <= d.beta <= 1, "distill.beta", "must be in [0, 1] (0: forward KL, 1: reverse KL)")
    need(0 <= d.on_policy_frac <= 1, "distill.on_policy_frac", "GKD's lambda must be in [0, 1]")
    need(0 < cfg.teacher.gpu_memory_utilization <= 1, "teacher.gpu_memory_utilization", "must be in (0, 1]")


_TASK_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _validate_tasks(d: DataConfig, need: Callable[[bool, str, str], None]) -> None:
    """``data.tasks`` (multi-task RL) and ``data.curriculum``; each task's own reward section as ``reward``."""
    need(
        d.curriculum == "fixed" or len(d.tasks) >= 2, "data.curriculum", "ucb picks among data.tasks: give two or more"
    )
    seen: set[str] = set()
    for i, t in enumerate(d.tasks):
        key = f"data.tasks.{i}"
        need(_TASK_NAME.fullmatch(t.name) is not None, f"{key}.name", "use letters, digits, _ and - (it names metrics)")
        need(t.name not in seen, f"{key}.name", f"two tasks are named {t.name!r}")
        seen.add(t.name)
        need(t.weight >= 0, f"{key}.weight", "must be >= 0")
        need(t.task != "jsonl" or t.path is not None, f"{key}.path", "a jsonl task needs a path")
        need(t.task == "jsonl" or (t.path is None and t.eval_path is None), f"{key}.path",
             "the arithmetic task generates its problems: set task: jsonl to read a file")  # fmt: skip
        need(t.arithmetic.num_operands >= 2, f"{key}.arithmetic.num_operands", "must be >= 2")
        need(1 <= t.arithmetic.digits <= 6, f"{key}.arithmetic.digits", "must be in [1, 6]")
        if t.reward is not None:
            prefix = f"{key}.reward."

            def scoped(ok: bool, field: str, message: str, prefix: str = prefix) -> None:
                need(ok, prefix + field.removeprefix("reward."), message)

            validate_reward(t.reward, scoped)
    need(not d.tasks or sum(t.weight for t in d.tasks) > 0, "data.tasks", "at least one task needs a weight > 0")
    u = d.ucb
    need(u.c >= 0, "data.ucb.c", "must be >= 0")
    need(u.window > 0, "data.ucb.window", "must be > 0 samples")
    need(u.temperature > 0, "data.ucb.temperature", "must be > 0")
    need(0 <= u.min_weight * max(1, len(d.tasks)) < 1, "data.ucb.min_weight", "must be in [0, 1 / number of tasks)")


def _floats(obj: Any, prefix: str) -> typing.Iterator[tuple[str, float]]:
    """Every float field of a config, by its dotted key (list items numbered, as in errors)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _floats(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _floats(item, f"{prefix}.{i}")
    elif isinstance(obj, float):
        yield prefix, obj


def _validate_staleness(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    """Overlapped rollouts (``rollout.max_staleness`` >= 1) where their batches' versions are well defined."""
    r, k = cfg.rollout, cfg.rollout.max_staleness
    need(k >= 0, "rollout.max_staleness", "must be >= 0 (0: the synchronous loop)")
    if k == 0:
        return
    need(r.sync_every == 1, "rollout.max_staleness",
         f"needs rollout.sync_every=1 (got {r.sync_every}): a semi-online sampler is stale by design")  # fmt: skip
    need(cfg.engine.dtype in ("auto", cfg.model.dtype), "rollout.max_staleness",
         f"does not combine with engine.dtype={cfg.engine.dtype}: GRPO then recomputes old_logprobs with "
         "the trainer, which would drop the ratio to the stale sampler")  # fmt: skip
    need(
        not cfg.data.tasks,
        "rollout.max_staleness",
        "does not combine with data.tasks: the curriculum updates the mix while the next batch is drawn",
    )
    need(
        cfg.engine.backend != "vllm",
        "rollout.max_staleness",
        "does not combine with engine.backend=vllm: vLLM shares the trainer's GPU (use torch or ray)",
    )


def _validate_optim(o: OptimConfig, need: Callable[[bool, str, str], None]) -> None:
    need(o.lr > 0, "optim.lr", "must be > 0")
    need(0 <= o.beta1 < 1, "optim.beta1", "must be in [0, 1)")
    need(0 <= o.beta2 < 1, "optim.beta2", "must be in [0, 1)")
    need(o.eps > 0, "optim.eps", "must be > 0")
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _validate_model(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    device = cfg.model.device
    need(
        _DEVICE.fullmatch(device) is not None,
        "model.device",
        f"{device!r} is not a device: use auto, cpu, cuda, cuda:N (N a GPU index) or mps",
    )
    if cfg.model.dtype != "float16" or device not in ("cpu", "auto"):
        return
    from posttrain.device import resolve_device  # torch, only for the one setting that needs it

    if resolve_device(device).type == "cpu":
        where = "" if device == "cpu" else " (model.device=auto, and there is no CUDA GPU here)"
        need(
            False,
            "model.dtype",
            f"float16 on the CPU{where} gives NaN losses: use model.dtype=float32 or bfloat16",
        )


def _validate_scale(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    """The engine's and the launcher's numbers; what an engine can do is its own declaration
    (``posttrain.rollout.base``), asked by the factory before any model loads."""
    e, d, lo = cfg.engine, cfg.dist, cfg.lora
    need(e.workers > 0, "engine.workers", "must be > 0")
    need(e.batch_size > 0, "engine.batch_size", "must be > 0")
    need(e.dtype == "auto" or e.backend == "torch", "engine.dtype",
         f"only the torch engine samples in its own dtype; the {e.backend} engine follows model.dtype: use auto")  # fmt: skip
    for key in ("sync_timeout_s", "generate_timeout_s"):
        need(getattr(e, key) > 0, f"engine.{key}", "must be > 0 seconds")
    need(0 < e.gpu_memory_utilization < 1, "engine.gpu_memory_utilization", "must be in (0, 1)")
    need(d.timeout_s > 0, "dist.timeout_s", "must be > 0 seconds")
    if lo is not None:
        need(lo.r > 0, "lora.r", "must be > 0")
        need(lo.alpha > 0, "lora.alpha", "must be > 0")
        need(0 <= lo.dropout < 1, "lora.dropout", "must be in [0, 1)")
        need(bool(lo.target_modules.strip()), "lora.target_modules", "name the modules to adapt, or all-linear")
        need(
            lo.quantize != "4bit" or d.strategy != "fsdp",
            "lora.quantize",
            "QLoRA's 4-bit weights are not sharded by FSDP2 here: use dist.strategy=ddp",
        )


def _validate_preferences(cfg: Config, src: Source, need: Callable[[bool, str, str], None]) -> None:
    d, c = cfg.dpo, cfg.compare
    need(d.beta > 0, "dpo.beta", "must be > 0")
    need(0 <= d.label_smoothing < 0.5, "dpo.label_smoothing", "must be in [0, 0.5)")
    need(d.nll_coef >= 0, "dpo.nll_coef", "must be >= 0")
    need(
        d.divpo_split != "quantile" or 0 < d.divpo_threshold <= 0.5,
        "dpo.divpo_threshold",
        "with dpo.divpo_split=quantile it is the share of each pool on each side: must be in (0, 0.5]",
    )
    need(
        d.divpo_embedding_model is None or d.divpo_criterion == "embedding",
        "dpo.divpo_embedding_model",
        f"embeds responses for dpo.divpo_criterion=embedding only (got {d.divpo_criterion})",
    )
    need(c.seeds > 0, "compare.seeds", "must be > 0")
    need(c.sampled_responses > 0, "compare.sampled_responses", "must be > 0")
    need(c.eval_points > 0, "compare.eval_points", "must be > 0")
    for name, overlay in c.methods.items():
        where = f"compare.methods.{name}"
        recipe = overlay.get("recipe") if isinstance(overlay, dict) else None
        need(recipe in ("dpo", "grpo"), f"{where}.recipe", "each method needs recipe: dpo or recipe: grpo")
        build(Config, {k: v for k, v in overlay.items() if k != "recipe"}, where, src)  # keys and types


def _validate_datagen(d: DatagenConfig, need: Callable[[bool, str, str], None]) -> None:
    """``posttrain data``'s ranges; which file a subcommand needs is checked when it runs."""
    need(d.workers > 0, "datagen.workers", "must be > 0")
    need(d.batch_size > 0, "datagen.batch_size", "must be > 0")
    need(bool(d.fields.strip()), "datagen.fields", "name the fields to compare (comma-separated), or auto")
    need(0 < d.dedup.threshold <= 1, "datagen.dedup.threshold", "must be in (0, 1]")
    need(d.dedup.num_perm >= 16, "datagen.dedup.num_perm", "must be >= 16")
    need(d.dedup.shingle_words > 0, "datagen.dedup.shingle_words", "must be > 0")
    need(d.decontaminate.ngram > 0, "datagen.decontaminate.ngram", "must be > 0")
    p = d.prune
    need(0 <= p.fraction < 1, "datagen.prune.fraction", "must be in [0, 1)")
    need(0 <= p.min_score <= 1, "datagen.prune.min_score", "must be in [0, 1]")
    need(p.min_words > 0, "datagen.prune.min_words", "must be > 0")
    s = d.synth
    need(s.num_prompts > 0, "datagen.synth.num_prompts", "must be > 0")
    need(s.seeds_per_prompt > 0, "datagen.synth.seeds_per_prompt", "must be > 0")
    need(s.answers > 0, "datagen.synth.answers", "must be > 0")
    need(s.shard_size > 0, "datagen.synth.shard_size", "must be > 0")
    need(s.max_shards >= 0, "datagen.synth.max_shards", "must be >= 0 (0: no limit)")
    need(s.rip_max_gap is None or s.rip_max_gap >= 0, "datagen.synth.rip_max_gap", "must be >= 0 (or null: off)")
    need(s.gen_sampling.temperature >= 0, "datagen.synth.gen_sampling.temperature", "must be >= 0 (0 is greedy)")
    need(s.gen_sampling.max_new_tokens > 0, "datagen.synth.gen_sampling.max_new_tokens", "must be > 0")
    need(
        s.filter != "rip" or s.reward_model is not None,
        "datagen.synth.reward_model",
        "the rip filter scores responses with a reward model: give its directory",
    )
    need(d.select.num > 0, "datagen.select.num", "must be > 0")
    need(d.select.clusters > 0, "datagen.select.clusters", "must be > 0")


def _validate_adaptive(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    """`posttrain adaptive`'s head and comparison, and the mixed decoding task's sizes."""
    a, m = cfg.adaptive, cfg.data.mixed_decoding
    temps = a.temperatures
    need(len(temps) >= 2, "adaptive.temperatures", "the head needs at least two temperatures to choose from")
    need(all(t >= 0 for t in temps), "adaptive.temperatures", "must be >= 0 (0 is greedy)")
    need(len(set(temps)) == len(temps), "adaptive.temperatures", f"must differ, got {temps}")
    need(a.width >= 0, "adaptive.width", "must be >= 0 (0: one linear layer)")
    need(a.beta > 0, "adaptive.beta", "must be > 0")
    need(a.eval_prompts >= 0, "adaptive.eval_prompts", "must be >= 0 (0 skips the comparison)")
    need(a.eval_samples >= 1, "adaptive.eval_samples", "must be >= 1")
    need(0 <= m.variety_fraction <= 1, "data.mixed_decoding.variety_fraction", "must be in [0, 1]")
    need(m.list_size >= 1, "data.mixed_decoding.list_size", "must be >= 1")
    need(m.max_number > m.list_size, "data.mixed_decoding.max_number",
         f"must be > data.mixed_decoding.list_size ({m.list_size}): some number must be left to answer")  # fmt: skip


def _validate_aggregation(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    li = cfg.data.length_instructions
    need(0 < li.fraction <= 1, "data.length_instructions.fraction", "must be in (0, 1]")
    need(li.max_words > 0, "data.length_instructions.max_words", "must be > 0")
    need(
        "<MAX_LEN>" in li.template or "{max_len}" in li.template,
        "data.length_instructions.template",
        "must hold <MAX_LEN> (or {max_len}), where the word limit goes",
    )
    if cfg.data.task != "aggregation":
        return
    a = cfg.data.aggregation
    need(a.candidates_from is not None, "data.aggregation.candidates_from", "the aggregation task needs the model "
         "directory that samples its candidate solutions")  # fmt: skip
    need(
        a.base != "jsonl" or cfg.data.path is not None, "data.path", "an aggregation over a jsonl task needs data.path"
    )
    need(a.num_candidates >= 1, "data.aggregation.num_candidates", "must be >= 1")
    need(a.max_new_tokens > 0, "data.aggregation.max_new_tokens", "must be > 0")
    need(a.temperature >= 0, "data.aggregation.temperature", "must be >= 0 (0 is greedy)")
    need(a.batch_size > 0, "data.aggregation.batch_size", "must be > 0")
    need(a.num_train_problems > 0, "data.aggregation.num_train_problems", "must be > 0")
    need(0 <= a.easy_kept <= 1, "data.aggregation.easy_kept", "must be in [0, 1]")
    need(0 <= a.hard_fraction < 1, "data.aggregation.hard_fraction", "must be in [0, 1) (0: use easy_kept)")


def _validate_eval_and_sft_data(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    d, e, p = cfg.data, cfg.eval, cfg.predict
    need(0 < d.train_fraction <= 1, "data.train_fraction", "must be in (0, 1]")
    need(d.min_demo_tokens >= 0, "data.min_demo_tokens", "must be >= 0")
    need(d.max_demo_tokens >= 0, "data.max_demo_tokens", "must be >= 0 (0: no limit)")
    need(
        d.max_demo_tokens == 0 or d.max_demo_tokens >= d.min_demo_tokens,
        "data.max_demo_tokens",
        f"must be >= data.min_demo_tokens ({d.min_demo_tokens}) or 0",
    )
    need(cfg.train.epochs >= 0, "train.epochs", "must be >= 0 (0: train.max_steps decides)")
    need(e.chunk_size > 0, "eval.chunk_size", "must be > 0")
    need(
        p.large_k >= 0 and p.large_k & (p.large_k - 1) == 0,
        "predict.large_k",
        "must be a power of two, the k that pass@k is reported at (0: the largest <= eval.samples_per_problem)",
    )
    need(
        p.large_k <= e.samples_per_problem,
        "predict.large_k",
        f"must be <= eval.samples_per_problem ({e.samples_per_problem}): pass@k needs k <= n",
    )
    need(p.rl_samples_per_problem > 0, "predict.rl_samples_per_problem", "must be > 0")
