"""``kind: judge`` and ``kind: verdict``: an LLM judge as a reward, and the reward that trains a judge.

**``kind: judge``** (a judge as a reward; J1, Whitehouse et al. 2025). A causal LM
directory reads each sample through a template (``posttrain.judges.parse``: built-in
J1-style ``j1``, the tiny model's ``short``, or a file), rendered as a user turn with the
judge's chat template when it has one, reasons, and states a verdict. It samples with
the rollout factory's engine (``posttrain.rollout.factory.build_engine``: the in-process
sampler, one Ray actor when the reward runs on Ray, i.e. with ``engine.backend=ray``, or
a second vLLM engine beside a vLLM policy: ``engine_backend``), greedily by default.

- ``mode: pointwise``: the reward is the judge's 0-10 score / 10.
- ``mode: pairwise``: every pair of a prompt's G samples is judged in both orders and
  a verdict counts only when the two agree (``posttrain.judges.rules``); the reward is
  the sample's win rate over its decided pairs. ``against: reference`` judges each
  sample against the example's demonstration instead: 1 a win, 0 a loss.

A verdict the parser cannot read, a pairwise sample with no decided pair, and a
prompt too long for the judge's context are missing scores (None): counted in the
scorer's report (``reward_missing``), the sample unscored, never 0. The counts
``judge_calls``, ``parse_failures``, ``pairs``, ``consistent_pairs``, ``too_long`` and
``tokens`` (the judge's generated tokens) go to the metrics as ``<name>/<count>``
(position consistency = consistent_pairs / pairs).

A sample's group is the run of consecutive samples of one example, as the RL loop lays
them out (row i*G+j is sample j of prompt i); scored one at a time (after a batch
failed), a pairwise sample has no group and is missing.

**``kind: verdict``** (training a judge): the reward of ``data.task: judge``
(``posttrain.tasks.judging``): 1 for a right verdict, with J1's both-orders rule
(``data.judge.reward: both_orders``) applied across the pair's two prompts, which the
task draws side by side. A malformed verdict is a wrong one there: 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from posttrain.data.tokenize import chat_enabled, encode_prompt
from posttrain.errors import ConfigError
from posttrain.judges.parse import Mode, Side, load_template, parse_pairwise, parse_pointwise, question_text, render
from posttrain.judges.rules import PairTally, against_reference, group_win_rates, paired_rewards
from posttrain.rewards.base import Job
from posttrain.tasks.base import Example, Prompt, Task
from posttrain.tasks.prompting import PromptStyle

COUNTS = ("judge_calls", "parse_failures", "pairs", "consistent_pairs", "too_long", "tokens")


def runs(examples: Sequence[Example]) -> list[list[int]]:
    """Indices of each run of consecutive samples of one example: the RL loop's groups, in order."""
    out: list[list[int]] = []
    for i, ex in enumerate(examples):
        if out and examples[out[-1][0]] == ex:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def engine_backend(backend: str, engine: str = "torch") -> Literal["torch", "ray", "vllm"]:
    """The judge's engine: the policy's. Ray actors when the reward runs on Ray, vLLM beside a vLLM policy.

    ``backend`` is where the reward runs (``local`` or ``ray``), ``engine`` the policy's
    ``engine.backend``. A vLLM judge is a second vLLM engine on the same GPU, taking its own
    share of the memory (the component's ``gpu_memory_utilization``); without a GPU
    ``posttrain.rollout.factory.check_engine`` refuses ``engine.backend=vllm`` before any reward loads.
    """
    if backend == "ray" or engine == "ray":
        return "ray"
    return "vllm" if engine == "vllm" else "torch"


class JudgeModel:
    """A causal LM that answers judge prompts: rendered text in, (completion text, tokens) out; None when too long."""

    def __init__(
        self,
        path: str,
        *,
        dtype: str = "float32",
        device: str = "auto",
        backend: str = "local",
        engine: str = "torch",
        gpu_memory_utilization: float = 0.2,
        batch_size: int = 64,
        workers: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        field: str = "reward.components.0.path",
    ) -> None:
        from posttrain.config import Config, EngineConfig, ModelConfig, SamplingConfig
        from posttrain.errors import ModelError
        from posttrain.models.io import check_causal_lm_dir, context_length, load_model, load_tokenizer
        from posttrain.records import SamplingParams
        from posttrain.rollout.factory import build_engine

        try:
            check_causal_lm_dir(path)
        except ModelError as e:
            raise ModelError(e.message, file=e.file or path, field=field) from None
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path, dtype, device).eval()
        self.model.requires_grad_(False)
        self.style = PromptStyle(chat=chat_enabled(self.tokenizer, "auto"))
        self.context = context_length(self.model)
        self.sampling = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        cfg = Config(
            model=ModelConfig(path=path, dtype=dtype, device=device),  # type: ignore[arg-type]
            engine=EngineConfig(
                backend=engine_backend(backend, engine),
                batch_size=batch_size,
                workers=workers,
                gpu_memory_utilization=gpu_memory_utilization,
            ),
            sampling=SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens),
        )
        self.engine = build_engine(cfg, self.model, self.tokenizer, path)  # the policy's factory

    def generate(self, texts: list[str]) -> list[tuple[str, int] | None]:
        """The judge's reply to each rendered prompt, with its token count; None where the prompt does not fit."""
        encoded = [encode_prompt(self.tokenizer, self.style.apply(t)) for t in texts]
        room = None if self.context is None else self.context - self.sampling.max_new_tokens
        fits = [i for i, ids in enumerate(encoded) if room is None or len(ids) <= room]
        out: list[tuple[str, int] | None] = [None] * len(texts)
        if fits:
            done = self.engine.generate([encoded[i] for i in fits], self.sampling)
            for i, c in zip(fits, done):
                out[i] = (c.text, len(c.completion_ids))
        return out

    def close(self) -> None:
        self.engine.close()


class JudgeComponent:
    """A judge model's verdicts as a reward component, in this process (see the module docstring)."""

    isolate = False

    def __init__(
        self, judge: JudgeModel, *, mode: Mode, template: str, against: str = "group", name: str = "judge"
    ) -> None:
        self.judge, self.mode, self.against, self.name = judge, mode, against, name
        self.template = template  # the template's text
        self.counts = dict.fromkeys(COUNTS, 0.0)

    def take_counts(self) -> dict[str, float]:
        """The counts since the last call, reset: what the scorer adds to its report for the metrics."""
        out, self.counts = self.counts, dict.fromkeys(COUNTS, 0.0)
        return out

    def _ask(self, texts: list[str]) -> list[str | None]:
        replies = self.judge.generate(texts)
        self.counts["judge_calls"] += len(texts)
        self.counts["too_long"] += sum(r is None for r in replies)
        self.counts["tokens"] += sum(r[1] for r in replies if r is not None)
        return [None if r is None else r[0] for r in replies]

    def score(self, examples: list[Example], prompts: list[Prompt], texts: list[str]) -> list[float | None]:
        questions = [question_text(p) for p in prompts]
        if self.mode == "pointwise":
            replies = self._ask([render(self.template, q, (t,)) for q, t in zip(questions, texts)])
            scores = [None if r is None else parse_pointwise(r) for r in replies]
            self.counts["parse_failures"] += sum(r is not None and s is None for r, s in zip(replies, scores))
            return [None if s is None else s / 10.0 for s in scores]
        if self.against == "reference":
            return self._against_reference(examples, questions, texts)
        return self._win_rates(examples, questions, texts)

    def _sides(self, prompts: list[str]) -> list[Side | None]:
        replies = self._ask(prompts)
        sides = [None if r is None else parse_pairwise(r) for r in replies]
        self.counts["parse_failures"] += sum(r is not None and s is None for r, s in zip(replies, sides))
        return sides

    def _win_rates(self, examples: list[Example], questions: list[str], texts: list[str]) -> list[float | None]:
        groups = runs(examples)
        asked: list[tuple[int, int]] = [(i, k) for g in groups for i in g for k in g if i != k]
        sides = self._sides([render(self.template, questions[i], (texts[i], texts[k])) for i, k in asked])
        verdict = dict(zip(asked, sides))
        tally = PairTally()
        out: list[float | None] = [None] * len(texts)
        for g in groups:
            rates = group_win_rates(len(g), lambda a, b, g=g: verdict[(g[a], g[b])], tally)  # type: ignore[misc]
            for i, r in zip(g, rates):
                out[i] = r
        self.counts["pairs"] += tally.pairs
        self.counts["consistent_pairs"] += tally.consistent
        return out

    def _against_reference(self, examples: list[Example], questions: list[str], texts: list[str]) -> list[float | None]:
        refs = [ex.completion for ex in examples]
        if any(r is None for r in refs):
            raise ValueError("against: reference needs each example's demonstration (its completion) as the reference")
        prompts = []
        for q, t, r in zip(questions, texts, refs):
            prompts += [render(self.template, q, (t, r or "")), render(self.template, q, (r or "", t))]
        sides = self._sides(prompts)
        out = []
        for j in range(len(texts)):
            first, swapped = sides[2 * j], sides[2 * j + 1]
            if first is not None and swapped is not None:
                self.counts["pairs"] += 1
                self.counts["consistent_pairs"] += first != swapped
            out.append(against_reference(first, swapped))
        return out

    def job(self, example: Example, prompt: Prompt, text: str) -> Job:
        raise NotImplementedError("a judge runs in this process, batched")

    def close(self) -> None:
        self.judge.close()


class VerdictComponent:
    """The reward of ``data.task: judge``: verdicts checked against the known winner, J1's both-orders rule."""

    isolate = False

    def __init__(self, task: Task, name: str = "verdict", field: str = "reward.components.0.kind") -> None:
        from posttrain.tasks.judging import JudgeTask

        inner = getattr(task, "task", task)  # under a prompt style, the task it wraps
        if not isinstance(inner, JudgeTask):
            raise ConfigError("kind: verdict rewards the judge task's verdicts: set data.task=judge", field=field)
        self.task, self.judge_task, self.name = task, inner, name

    def score(self, examples: list[Example], prompts: list[Prompt], texts: list[str]) -> list[float | None]:
        from posttrain.tasks.judging import GOOD, partner_id

        right = [self.task.verify(ex, t) for ex, t in zip(examples, texts)]
        if self.judge_task.cfg.reward == "per_order":
            return list(right)
        groups = {examples[g[0]].id: g for g in runs(examples)}
        out: list[float | None] = list(right)
        for key, g in groups.items():
            partner = groups.get(partner_id(key))
            if self.judge_task.mode == "pairwise":
                paired = paired_rewards([right[i] for i in g], None if partner is None else [right[i] for i in partner])
            else:
                paired = self._pointwise(g, partner, examples[g[0]].answer == GOOD, texts, right)
            for i, r in zip(g, paired):
                out[i] = r
        return out

    @staticmethod
    def _pointwise(
        g: list[int], partner: list[int] | None, good: bool, texts: list[str], right: list[float]
    ) -> list[float]:
        """Sample j scores the chosen response above sample j of the rejected one; alone: its own verdict."""
        if partner is None or len(partner) != len(g):
            return [right[i] for i in g]
        mine = [parse_pointwise(texts[i]) for i in g]
        theirs = [parse_pointwise(texts[i]) for i in partner]
        out = []
        for a, b in zip(mine, theirs):
            chosen, rejected = (a, b) if good else (b, a)
            out.append(float(chosen is not None and rejected is not None and chosen > rejected))
        return out

    def job(self, example: Example, prompt: Prompt, text: str) -> Job:
        raise NotImplementedError("the verdict reward runs in this process, over the whole batch")


def build_judge(c: Any, key: str, ctx: dict[str, Any]) -> JudgeComponent:
    """``kind: judge`` from its config entry ``c`` (``reward.components.N``)."""
    from posttrain.config.reward import component_name

    template = load_template(c.template, c.mode, field=f"{key}.template")
    judge = JudgeModel(
        c.path, dtype=ctx["dtype"], device=ctx["device"], backend=ctx.get("backend", "local"),
        engine=ctx.get("engine", "torch"), gpu_memory_utilization=c.gpu_memory_utilization, batch_size=c.batch_size, max_new_tokens=c.max_new_tokens, temperature=c.temperature, field=f"{key}.path",
    )  # fmt: skip
    return JudgeComponent(judge, mode=c.mode, template=template, against=c.against, name=component_name(c))
