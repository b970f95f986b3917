"""Several tasks in one RL run (``data.tasks``): a task that looks like one ``Task`` to the loop.

The multi-task setting of "Bridging Offline and Online Reinforcement Learning for
LLMs" (Lanchantin et al. 2025, arXiv 2506.21495): verifiable and non-verifiable
prompts, each scored by its own reward, mixed in one GRPO or online-DPO run.

- ``MultiTask`` draws each iteration's prompts: every prompt's task is drawn by the
  current weights (``data.tasks[].weight``, or the curriculum's mix,
  ``posttrain.data.curriculum``), then each task's prompts from the task itself, all
  from the iteration's seed, so resume needs no data-loader state. Every example it
  hands out carries its task in its id (``<task>/<id>``): ``task_of`` routes it back.
- ``MultiScorer`` scores each sample with its own task's scorer (``data.tasks[].reward``,
  else the run's ``reward``) and merges the reports: component ``c`` of task ``t`` is
  logged as ``reward/t/c``.
- ``merge_records`` is the model's evaluation record over the tasks, evaluated one by
  one with their own checkers (``posttrain eval``, ``posttrain run``).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from posttrain.config.reward import RewardConfig, combine_roles
from posttrain.records import ScoreReport
from posttrain.tasks.base import Example, Prompt, Split, Task

SEP = "/"


def tag(name: str, ex: Example) -> Example:
    return dataclasses.replace(ex, id=f"{name}{SEP}{ex.id}")


def untag(ex: Example) -> Example:
    return dataclasses.replace(ex, id=ex.id.split(SEP, 1)[1])


class MultiTask:
    """``tasks`` (name -> task) drawn by ``weights``; verify, prompt and extract go to the example's own task."""

    name = "multi"

    def __init__(self, tasks: dict[str, Task], weights: dict[str, float]) -> None:
        self.tasks = dict(tasks)
        self.weights = dict(weights)  # the current mix; a curriculum sets it before each draw

    def task_of(self, example: Example) -> str:
        name = example.id.split(SEP, 1)[0]
        if name not in self.tasks:
            raise ValueError(f"example {example.id!r} names no task of {sorted(self.tasks)}")
        return name

    def draw_tasks(self, n: int, seed: int) -> list[str]:
        """The task of each of ``n`` prompts, by the current weights, fixed by ``seed``."""
        names = list(self.tasks)
        return random.Random(f"multi:{seed}").choices(names, weights=[self.weights[t] for t in names], k=n)

    def examples(self, split: Split, n: int | None, seed: int) -> list[Example]:
        """train: ``n`` prompts drawn by weight. test: each task's own test examples (``n`` each), task by task."""
        if split == "test":
            return [tag(t, ex) for t, task in self.tasks.items() for ex in task.examples("test", n, seed)]
        if n is None:
            raise ValueError("a multi-task run draws its training prompts by weight: ask for a number of them")
        order = self.draw_tasks(n, seed)
        drawn = {
            t: iter(task.examples("train", order.count(t), random.Random(f"{seed}:{t}").randrange(2**31)))
            for t, task in self.tasks.items()
            if t in order
        }
        return [tag(t, ex) for t in order for ex in [next(drawn[t], None)] if ex is not None]

    def prompt(self, example: Example) -> Prompt:
        return self.tasks[self.task_of(example)].prompt(untag(example))

    def verify(self, example: Example, completion: str) -> float:
        return self.tasks[self.task_of(example)].verify(untag(example), completion)

    def extract(self, completion: str) -> str | None:
        raise TypeError("a multi-task run's answers are read by each task: evaluate the tasks one by one")


def verifier_name(cfg: RewardConfig, names: Sequence[str]) -> str | None:
    """The component whose mean is a task's accuracy: the verifier of hero/gated, or the one kind: verifier."""
    if cfg.combine != "weighted_sum":
        return names[combine_roles(cfg)[0]]
    found = [n for c, n in zip(cfg.components, names) if c.kind == "verifier"]
    return found[0] if len(found) == 1 else None


class MultiScorer:
    """One scorer per task; each sample scored by its own task's, the reports merged into one."""

    def __init__(self, multi: MultiTask, scorers: dict[str, Any], accuracy: dict[str, str | None]) -> None:
        self.multi, self.scorers = multi, scorers
        self.accuracy = accuracy  # task -> the component whose mean is its accuracy (None: no verifier)

    def close(self) -> None:
        for s in self.scorers.values():
            s.close()

    def score(
        self,
        examples: list[Example],
        texts: list[str],
        groups: Sequence[int] | None = None,
        prompts: Sequence[Prompt] | None = None,
        prompt_groups: Sequence[int] | None = None,
    ) -> ScoreReport:
        n = len(texts)
        report = ScoreReport([None] * n)
        where: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            where.setdefault(self.multi.task_of(ex), []).append(i)
        for t, rows in where.items():

            def pick(values: Sequence[Any] | None, rows: list[int] = rows) -> list[Any] | None:
                return None if values is None else [values[i] for i in rows]

            sub = self.scorers[t].score(
                [untag(examples[i]) for i in rows], [texts[i] for i in rows], groups=pick(groups),
                prompts=pick(prompts), prompt_groups=pick(prompt_groups),
            )  # fmt: skip
            _merge(report, sub, t, rows, n)
        return report


def _merge(report: ScoreReport, sub: ScoreReport, task: str, rows: list[int], n: int) -> None:
    """Task ``task``'s report on samples ``rows`` into the batch's: scores by row, components as ``task/name``."""
    for k, i in enumerate(rows):
        report.scores[i] = sub.scores[k]
    if sub.weights is not None:  # a hero task's prompt weights; the other tasks' prompts weigh 1
        if report.weights is None:
            report.weights = [1.0] * n
        for k, i in enumerate(rows):
            report.weights[i] = sub.weights[k]
    for name, values in sub.components.items():
        full = report.components.setdefault(f"{task}{SEP}{name}", [None] * n)
        for k, i in enumerate(rows):
            full[i] = values[k]
    report.errors += sub.errors
    report.timeouts += sub.timeouts
    report.skipped += sub.skipped
    report.missing += sub.missing
    for key, value in getattr(sub, "counts", {}).items():  # a component's own counts (a judge's): per task
        counts = report.counts
        counts[f"{task}{SEP}{key}"] = counts.get(f"{task}{SEP}{key}", 0.0) + value
    for m in sub.messages:
        if len(report.messages) < 5:
            report.messages.append(f"{task}: {m} (of the task's samples)")


def build_multi_scorer(
    multi: MultiTask, rewards: dict[str, RewardConfig], build: Callable[[RewardConfig, Task], Any]
) -> MultiScorer:
    """Each task's reward section built for that task by ``build`` (``build_reward`` with the run's settings)."""
    from posttrain.config.reward import component_name

    scorers: dict[str, Any] = {}
    try:
        for t, task in multi.tasks.items():
            scorers[t] = build(rewards[t], task)
    except BaseException:
        for s in scorers.values():
            s.close()
        raise
    names = {t: [component_name(c) for c in rewards[t].components] for t in multi.tasks}
    return MultiScorer(multi, scorers, {t: verifier_name(rewards[t], names[t]) for t in multi.tasks})


# --- evaluation ------------------------------------------------------------------

_SUMMED = ("num_scored_problems", "num_unscored_problems", "check_timeouts", "check_errors", "num_problems_used")


def merge_records(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A model's evaluation over several tasks: each task's record under ``tasks``, and their pooled figures.

    pass@k, maj@k and greedy accuracy are means over every task's scored problems (each
    task weighted by its problem count), at the k all tasks report; counts are summed.
    Intervals and held-out NLL stay per task.
    """
    first = next(iter(records.values()))
    weights = {t: float(r.get("num_scored_problems") or 0) for t, r in records.items()}
    total = sum(weights.values())

    def pooled(key: str) -> dict[str, float]:
        ks = set.intersection(*(set((r.get(key) or {}).keys()) for r in records.values()))
        if not total:
            return {}
        return {k: sum(weights[t] * float(r[key][k]) for t, r in records.items() if weights[t]) / total
                for k in sorted(ks, key=int)}  # fmt: skip

    greedy = [(weights[t], r.get("greedy_accuracy")) for t, r in records.items()]
    out: dict[str, Any] = {
        "pass_at_k": pooled("pass_at_k"),
        "maj_at_k": pooled("maj_at_k"),
        "greedy_accuracy": (
            sum(w * float(g) for w, g in greedy if w and g is not None) / total
            if total and all(g is not None for w, g in greedy if w) else math.nan
        ),
        "samples_per_problem": first.get("samples_per_problem"),
        "temperature": first.get("temperature"),
        "tasks": records,
    }  # fmt: skip
    for key in _SUMMED:
        out[key] = sum(int(r.get(key) or 0) for r in records.values())
    return out


def format_task_table(results: dict[str, dict[str, Any]]) -> str:
    """eval.md's per-task table (models evaluated with ``data.tasks``); "" when none was."""
    rows = [
        f"| {model} | {t} | {r.get('num_scored_problems')} | {_fmt((r.get('pass_at_k') or {}).get('1'))} | "
        f"{_fmt(r.get('greedy_accuracy'))} |"
        for model, rec in results.items()
        for t, r in (rec.get("tasks") or {}).items()
    ]
    if not rows:
        return ""
    return "\n".join(["| model | task | problems | pass@1 | greedy |", "|---|---|---|---|---|", *rows])


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"
