"""On-policy distillation, and the teacher and expert terms GRPO can add, on the shared RL loop.

``posttrain distill model.path=STUDENT teacher.path=TEACHER`` (``DistillStep``), after GKD
(Agarwal et al. 2024, arXiv 2306.13649, Algorithm 1): each iteration

1. the student samples ``rollout.samples_per_prompt`` completions of each of
   ``rollout.prompts_per_step`` prompts, or, on a share 1 - ``distill.on_policy_frac``
   of the iterations (GKD's lambda is the student's share), the teacher does;
2. the teacher scores the same tokens in a forward pass (``posttrain.train.teacher``);
3. one optimiser step on ``distill.loss`` per token (``posttrain.algorithms.distill``):
   the reverse KL over the vocabulary, GKD's JSD(beta), or the sampled tokens' log-ratio
   as a per-token advantage. Token mean over the iteration's completion tokens.

The reward is not used for the update; the loop still scores every sample, and the
logged ``reward`` shows whether distillation helps the task.

``RLMixing`` is what GRPO adds to its update when asked (``posttrain.recipes.grpo``):
KDRL's KD term to the teacher, CHORD's SFT term on the prompts' demonstrations, LUFFY's
demonstration inside the group and Prefix-RFT's prefixed rollouts. The math is in
``posttrain.algorithms.mixing``; this file is wiring only.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from posttrain.algorithms.distill import distill_loss, generalized_jsd, reverse_kl, sampled_reverse_kl
from posttrain.algorithms.grpo import KL_ESTIMATORS
from posttrain.algorithms.logprobs import gather_logprobs
from posttrain.algorithms.mixing import (
    coef_at,
    demo_completion,
    insert_demonstrations,
    prefix_length,
    sft_token_loss,
    shaped_off_policy_loss,
)
from posttrain.algorithms.rl_batch import full_batch
from posttrain.algorithms.types import LossOutput, masked_sum
from posttrain.config import Config
from posttrain.data.batch import TokenBatch, collate, packed_micro_batches
from posttrain.device import precision
from posttrain.errors import ConfigError
from posttrain.recipes.online import Run, train_online
from posttrain.records import Completion, SamplingParams, ScoredGroups
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.seeds import derive_seed
from posttrain.tasks.base import Example
from posttrain.tasks.registry import make_task
from posttrain.train import distributed
from posttrain.train.loop import optimizer_step
from posttrain.train.teacher import (
    LocalTeacher,
    Teacher,
    add_teacher_logprobs,
    check_teacher,
    check_teacher_early,
    open_teacher,
)


def not_yet_remote_teacher(cfg: Config, what: str) -> None:
    """A teacher that samples is an in-process engine: refused in one line on the Ray and vLLM engines."""
    if cfg.engine.backend != "torch":
        raise ConfigError(
            f"{what} with engine.backend={cfg.engine.backend} is not supported yet: the teacher samples in this "
            "process; use engine.backend=torch",
            field="engine.backend",
        )


class DistillStep:
    stage = "distill"
    writer_key = "iteration"
    doom_groups = False  # rewards are only logged
    needs_reference = False

    def __init__(self, cfg: Config) -> None:
        if cfg.teacher.path is None:
            raise ConfigError("posttrain distill needs a teacher: set teacher.path", field="teacher.path")
        check_teacher(cfg, full_distribution=cfg.distill.loss != "sampled")
        if cfg.distill.on_policy_frac < 1 and cfg.teacher.backend == "local":  # a remote teacher samples itself
            not_yet_remote_teacher(cfg, "teacher-sampled sequences (distill.on_policy_frac < 1)")
        check_teacher_early(cfg)
        self.teacher: Teacher | None = None
        self.teacher_engine: Any = None
        self.sampled_by = "student"

    def optimizer_steps(self, cfg: Config) -> int:
        return 1

    def _teacher(self, run: Run) -> Teacher:
        if self.teacher is None:
            self.teacher = open_teacher(run.cfg, run.tokenizer, run.model.device)
        return self.teacher

    def close(self) -> None:
        """Release a remote teacher's actor or GPU memory (the loop calls it when the run ends)."""
        if self.teacher is not None:
            self.teacher.close()
            self.teacher = None

    def teacher_samples(self, cfg: Config, it: int) -> bool:
        """Does the teacher sample iteration ``it``? A seeded draw per iteration (GKD draws per batch)."""
        frac = cfg.distill.on_policy_frac
        return frac < 1 and random.Random(derive_seed(cfg.seed, it, 11)).random() >= frac

    def sampler(self, run: Run, it: int, engine: Any) -> Any:
        """The engine of iteration ``it``: the student's, or the teacher's (GKD's lambda)."""
        teacher = self._teacher(run)
        self.sampled_by = "teacher" if self.teacher_samples(run.cfg, it) else "student"
        if self.sampled_by == "student":
            return engine
        if self.teacher_engine is None and isinstance(teacher, LocalTeacher):
            size = run.cfg.engine.batch_size
            self.teacher_engine = TorchEngine(teacher.module, run.tokenizer, batch_size=size)  # type: ignore[arg-type]
        elif self.teacher_engine is None:  # a Ray or vLLM teacher is an engine itself
            self.teacher_engine = teacher
        return self.teacher_engine

    def __call__(self, run: Run, it: int, groups: ScoredGroups, rollout: dict[str, Any]) -> dict[str, Any]:
        cfg = run.cfg
        pad = int(run.tokenizer.pad_token_id)  # type: ignore[arg-type]
        batch = full_batch(groups, pad)
        rows, mbs = list(range(len(batch.input_ids))), cfg.train.micro_batch_size
        if cfg.train.packing:
            micro = packed_micro_batches(batch, mbs)
        else:
            micro = [batch.select(rows[i : i + mbs]) for i in range(0, len(rows), mbs)]
        count = float(batch.response_mask.sum())
        stats = optimizer_step(run.net, run.optimizer, run.scheduler, micro, self.loss_fn(run), count,
                               cfg.train.grad_clip)  # fmt: skip
        record = {**rollout, "iteration": it + 1, "step": it + 1, "sampled_by": self.sampled_by, **stats}
        run.writer.write(record)
        return record

    def loss_fn(self, run: Run) -> Any:
        cfg, d, model = run.cfg, run.cfg.distill, run.model
        temperature = cfg.sampling.temperature or 1.0
        teacher = self._teacher(run)
        # a remote teacher with the sampled loss sends one logprob per token, not the vocabulary
        whole = d.loss != "sampled" or isinstance(teacher, LocalTeacher)

        def loss(mb: TokenBatch) -> LossOutput:
            mb = mb.to(model.device)
            with precision(model.device, cfg.train.mixed_precision):
                if mb.position_ids is not None:
                    out = run.net(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False)
                else:
                    out = run.net(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False)
                t_logits = teacher.logits(mb, temperature) if whole else None
            logits = out.logits[:, :-1].float()
            if temperature != 1.0:
                logits = logits / temperature
            targets = mb.input_ids[:, 1:]
            logprobs = gather_logprobs(logits, targets)
            if t_logits is not None:
                t_logprobs = gather_logprobs(t_logits, targets)
            else:
                t_logprobs = teacher.logprobs(mb, temperature).to(logprobs.device)
            if d.loss == "sampled":
                per_token, _ = sampled_reverse_kl(logprobs, t_logprobs)
            elif d.loss == "jsd":
                assert t_logits is not None
                per_token = generalized_jsd(logits, t_logits, d.beta)
            else:
                assert t_logits is not None
                per_token = reverse_kl(logits, t_logits)
            result = distill_loss(per_token, mb.response_mask)
            if d.loss == "sampled":  # the surrogate's value is no divergence: log the log-ratio instead
                result.metrics["distill"] = (masked_sum(logprobs - t_logprobs, mb.response_mask),
                                             float(mb.response_mask.sum()))  # fmt: skip
            n = float(mb.response_mask.sum())
            if d.loss != "reverse_kl" and t_logits is not None:  # the reverse KL over the vocabulary: one scale
                with torch.no_grad():
                    result.metrics["reverse_kl"] = (masked_sum(reverse_kl(logits, t_logits), mb.response_mask), n)
            elif t_logits is not None:
                result.metrics["reverse_kl"] = result.metrics["distill"]
            result.metrics["teacher_logprob"] = (masked_sum(t_logprobs, mb.response_mask), n)
            result.metrics["student_logprob"] = (masked_sum(logprobs, mb.response_mask), n)
            return result

        return loss


def train_distill(cfg: Config, resume: bool = False) -> Path:
    """On-policy distillation of ``model.path`` from ``teacher.path``; returns ``output_dir/final``."""
    return train_online(cfg, DistillStep(cfg), resume)


# --- what GRPO adds: KDRL, CHORD, LUFFY, Prefix-RFT -------------------------------------------


def wants_mixing(cfg: Config) -> bool:
    g = cfg.grpo
    return g.kd_coef > 0 or g.sft_coef > 0 or g.sft_coef_end > 0 or g.luffy or g.prefix_samples > 0


def demo_tokens(run: Run, ex: Example) -> list[int] | None:
    """The demonstration's completion ids ending in eos, or None when the example has none."""
    if ex.completion is None:
        return None
    ids = list(run.tokenizer(ex.completion, add_special_tokens=False)["input_ids"])
    eos = run.tokenizer.eos_token_id
    return ids + [int(eos)] if eos is not None and eos not in ids else ids


class PrefixEngine:
    """Prefix-RFT's sampler: some of each prompt's samples continue a prefix of its demonstration.

    The rollout's completion is prefix + continuation (the reward scores the whole);
    the prefix tokens carry sampler logprob 0 (pi_expert = 1) and are marked
    off-policy in ``prefix_lens`` for the step to train them as LUFFY's.
    """

    def __init__(self, inner: Any, tokenizer: Any, prefixes: dict[tuple[int, ...], list[int]], per_group: int,
                 group_size: int):  # fmt: skip
        self.inner, self.tokenizer, self.prefixes = inner, tokenizer, prefixes
        self.per_group, self.G = per_group, group_size
        self.capabilities = inner.capabilities
        self.prefix_lens: list[int] = []

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        starts = [
            (self.prefixes.get(tuple(p)) or []) if i % self.G >= self.G - self.per_group else []
            for i, p in enumerate(prompts)
        ]
        self.prefix_lens = [len(s) for s in starts]
        out: list[Completion | None] = [None] * len(prompts)
        plain = [i for i, s in enumerate(starts) if not s]
        prefixed = [i for i, s in enumerate(starts) if s]
        for rows, room in ((plain, sampling.max_new_tokens),
                           (prefixed, sampling.max_new_tokens - max((len(starts[i]) for i in prefixed), default=0))):  # fmt: skip
            if not rows:
                continue
            made = self.inner.generate([prompts[i] + starts[i] for i in rows],
                                       replace(sampling, max_new_tokens=max(room, 1)))  # fmt: skip
            for i, c in zip(rows, made):
                out[i] = self._merged(prompts[i], starts[i], c)
        return [c for c in out if c is not None]

    def _merged(self, prompt: list[int], prefix: list[int], c: Completion) -> Completion:
        """The prefix and its continuation as one completion of ``prompt``; the prefix's sampler logprobs 0."""
        if not prefix:
            return c
        ids = prefix + c.completion_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return replace(c, prompt_ids=list(prompt), completion_ids=ids, logprobs=[0.0] * len(prefix) + c.logprobs,
                       text=text)  # fmt: skip

    def sync_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.sync_weights(state)

    def close(self) -> None:
        self.inner.close()


class RLMixing:
    """The teacher and expert terms of one GRPO update; each is off unless its grpo key is set."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        if cfg.grpo.kd_coef > 0 and cfg.teacher.path is None:
            raise ConfigError("grpo.kd_coef > 0 needs a teacher: set teacher.path", field="teacher.path")
        if cfg.grpo.kd_coef > 0:
            check_teacher(cfg, full_distribution=False)
            check_teacher_early(cfg)
        if cfg.grpo.prefix_samples > 0:
            not_yet_remote_teacher(cfg, "Prefix-RFT (grpo.prefix_samples > 0)")
        self.teacher: Teacher | None = None
        self.task: Any = None
        self.kd_coef = self.sft_coef = 0.0
        self.prefix_engine: PrefixEngine | None = None
        self.demos: list[tuple[list[int], list[int]]] = []  # (prompt ids, demo ids) of this iteration

    def _task(self, run: Run) -> Any:
        if self.task is None:
            self.task = make_task(run.cfg.data, run.tokenizer)
        return self.task

    # the loop's hook: the sampler of iteration ``it``
    def sampler(self, run: Run, it: int, engine: Any) -> Any:
        g = self.cfg.grpo
        self.kd_coef = coef_at(g.kd_schedule, g.kd_coef, 0.0, it, self.cfg.train.max_steps)
        self.sft_coef = coef_at(g.sft_schedule, g.sft_coef, g.sft_coef_end, it, self.cfg.train.max_steps)
        if g.prefix_samples == 0:
            return engine
        # the prompts the loop is about to draw (a pure function of the seed and the iteration), with their demos
        from posttrain.data.tokenize import encode_prompt

        task, r = self._task(run), self.cfg.rollout
        prefixes = {}
        for ex in task.examples("train", r.prompts_per_step, derive_seed(self.cfg.seed, it, 2)):
            ids = demo_tokens(run, ex)
            if ids:
                prompt = tuple(encode_prompt(run.tokenizer, task.prompt(ex)))
                prefixes[prompt] = ids[: prefix_length(len(ids), g.prefix_ratio)]
        self.prefix_engine = PrefixEngine(engine, run.tokenizer, prefixes, g.prefix_samples, r.samples_per_prompt)
        return self.prefix_engine

    def prepare(self, run: Run, groups: ScoredGroups) -> tuple[ScoredGroups, torch.Tensor]:
        """LUFFY's demonstrations in the groups; (groups, (N*G, T_completion) off-policy token flags as lengths)."""
        G = groups.group_size
        N = len(groups.examples)
        self.demos = []
        for i, ex in enumerate(groups.examples):
            ids = demo_tokens(run, ex)
            if ids is not None:
                self.demos.append((groups.completions[i * G].prompt_ids, ids))
        off_len = torch.zeros(N * G, dtype=torch.long)  # leading off-policy tokens of each completion
        if self.prefix_engine is not None and len(self.prefix_engine.prefix_lens) == N * G:
            off_len = torch.tensor(self.prefix_engine.prefix_lens, dtype=torch.long)
        if not self.cfg.grpo.luffy:
            return groups, off_len
        task = self._task(run)
        demos: list[Completion | None] = []
        scores: list[float | None] = []
        for i, ex in enumerate(groups.examples):
            ids = demo_tokens(run, ex)
            if ids is None:
                demos.append(None)
                scores.append(None)
                continue
            demos.append(demo_completion(groups.completions[i * G].prompt_ids, ids, ex.completion or "",
                                         groups.policy_version))  # fmt: skip
            scores.append(float(task.verify(ex, ex.completion or "")))
        mixed, off = insert_demonstrations(groups, demos, scores)
        for row in off.flatten().nonzero().flatten().tolist():
            off_len[row] = len(mixed.completions[row].completion_ids)
        return mixed, off_len

    def annotate(self, run: Run, batch: TokenBatch, rows: list[int], rewards: torch.Tensor, off_len: torch.Tensor,
                 groups: ScoredGroups) -> None:  # fmt: skip
        """Per-token fields of the kept rows: ``off_policy`` (LUFFY, Prefix-RFT), ``teacher_logprobs``, ``kd_mask``."""
        g = self.cfg.grpo
        width = batch.response_mask.shape[1]
        off = torch.zeros((len(rows), width))
        for k, row in enumerate(rows):
            start = len(groups.completions[row].prompt_ids) - 1
            off[k, start : start + int(off_len[row])] = 1.0
        batch.extra["off_policy"] = off * batch.response_mask
        if g.kd_coef > 0:
            if self.teacher is None:
                self.teacher = open_teacher(self.cfg, run.tokenizer, run.model.device)
            add_teacher_logprobs(self.teacher, batch, self.cfg, run.model.device)
            r = rewards.flatten()[rows]
            use = r < g.kd_mask_threshold if g.kd_mask == "incorrect" else torch.ones(len(rows), dtype=torch.bool)
            batch.extra["kd_mask"] = use.float()[:, None].expand(-1, width) * (1.0 - batch.extra["off_policy"])

    def close(self) -> None:
        """Release a remote teacher (``GRPOStep.close``)."""
        if self.teacher is not None:
            self.teacher.close()
            self.teacher = None

    def on_policy(self, mb: TokenBatch) -> TokenBatch:
        """``mb`` with its off-policy tokens out of the clipped surrogate (they get LUFFY's shaped term)."""
        on = 1.0 - mb.extra["off_policy"]
        extra = {**mb.extra, "weights": mb.extra["weights"] * on}
        return TokenBatch(mb.input_ids, mb.attention_mask, mb.response_mask * on, extra, mb.position_ids)

    def add_terms(self, out: LossOutput, mb: TokenBatch, logprobs: torch.Tensor) -> LossOutput:
        """The RL loss plus the shaped off-policy term and the KD term, times (1 - mu) under CHORD."""
        g = self.cfg.grpo
        off, w = mb.extra["off_policy"], mb.extra["weights"]
        loss = out.loss_sum
        if bool(off.any()):
            shaped = shaped_off_policy_loss(logprobs, mb.extra["advantages"], g.luffy_gamma)
            loss = loss + (shaped * w * off).sum()
            out.metrics["off_policy_prob"] = (masked_sum(logprobs.exp(), off), float(off.sum()))
        if "teacher_logprobs" in mb.extra:
            kd = KL_ESTIMATORS[g.kd_estimator](logprobs, mb.extra["teacher_logprobs"])
            m = mb.extra["kd_mask"] * mb.response_mask
            loss = loss + self.kd_coef * (kd * w * m).sum()
            out.metrics["kd"] = (masked_sum(kd, m), float(m.sum()))
            out.metrics["kd_coef"] = (self.kd_coef, 1.0)
        if self.sft_coef > 0:
            loss = (1.0 - self.sft_coef) * loss
        return LossOutput(loss_sum=loss, metrics=out.metrics)

    def demo_micro_batches(self, minibatch: int, minibatches: int, count: float, pad: int) -> list[TokenBatch]:
        """CHORD: this optimiser step's share of the iteration's demonstrations, as micro-batches.

        Each carries ``sft_scale`` = mu * count / demo tokens (global), so that after the loop
        divides by the RL normaliser ``count`` the SFT term is mu times the demonstration
        tokens' mean NLL.
        """
        if self.sft_coef <= 0:
            return []
        mine = [d for i, d in enumerate(self.demos) if i % minibatches == minibatch]
        batch = collate([p for p, _ in mine], [c for _, c in mine], pad) if mine else None
        tokens = float(batch.response_mask.sum()) if batch is not None else 0.0
        total_count, total_tokens = distributed.all_sum([count, tokens])
        if batch is None or total_tokens == 0:
            return []
        scale = self.sft_coef * total_count / total_tokens
        batch.extra["sft_scale"] = torch.full((len(mine),), scale)
        mbs = self.cfg.train.micro_batch_size
        rows = list(range(len(mine)))
        return [batch.select(rows[i : i + mbs]) for i in range(0, len(rows), mbs)]

    def sft_loss(self, mb: TokenBatch, logprobs: torch.Tensor) -> LossOutput:
        """CHORD's SFT term on a demonstration micro-batch (``demo_micro_batches``)."""
        per_token = sft_token_loss(logprobs, self.cfg.grpo.sft_phi)
        mask = mb.response_mask
        scale = float(mb.extra["sft_scale"][0])
        return LossOutput(
            loss_sum=scale * (per_token * mask).sum(),
            metrics={"sft_nll": (masked_sum(-logprobs, mask), float(mask.sum())), "sft_coef": (self.sft_coef, 1.0)},
        )
