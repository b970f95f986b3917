"""The composite scorer: a weighted sum of reward components, failures counted, never 0.

``CompositeScorer.score`` runs every component on every sample and returns a
``ScoreReport``: the weighted sum per sample (None when any component is missing
for it), each component's own scores (logged as ``reward/<name>``), and the counts.

1. Components that may hang (``isolate``) run first, all of them in one pass of
   the deadline pool, one call per (sample, component): a failure of one call
   skips the group's calls not yet started, whichever component they belong to.
2. The others run in this process on the samples whose group has not failed,
   batched; only when a batch raises are its samples scored one at a time, to
   find and count the ones that fail (the rest of a failed group is skipped).

A single component's messages read ``sample i: ...``; with several, each names its
component (``sample i: brevity: ...``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.rewards.base import RewardComponent, ScoreReport, describe, to_score
from posttrain.rewards.isolate import DeadlinePool, Outcome
from posttrain.tasks.base import Example, Prompt, Task


def accept_score(value: Any) -> Outcome:
    """A component's value as an outcome: None is missing, a finite number ok, anything else an error."""
    if value is None:
        return Outcome("missing", error="returned None")
    return Outcome("ok", to_score(value))


class CompositeScorer:
    """``sum_k weight_k * component_k`` per sample; ``pool`` runs the components that may hang."""

    def __init__(
        self,
        components: Sequence[tuple[RewardComponent, float]],
        pool: DeadlinePool | None = None,
        task: Task | None = None,
        accept: Any = accept_score,
        combine: Any = None,
    ) -> None:
        names = [c.name for c, _ in components]
        if len(set(names)) != len(names):
            raise ValueError(f"reward components need distinct names, got {names}")
        if pool is None and any(c.isolate for c, _ in components):
            raise ValueError("a component that may hang needs a deadline pool")
        self.components, self.pool, self.task, self.accept = list(components), pool, task, accept
        # None: the weighted sum; else a group-level rule over the components' scores (posttrain.rewards.hero)
        self.combine = combine

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def score(
        self,
        examples: list[Example],
        texts: list[str],
        groups: Sequence[int] | None = None,
        prompts: Sequence[Prompt] | None = None,
        prompt_groups: Sequence[int] | None = None,
    ) -> ScoreReport:
        """``prompt_groups[i]``: sample i's prompt, for a group-level ``combine`` (``groups`` also dooms a group)."""
        n = len(texts)
        if len(examples) != n or (groups is not None and len(groups) != n):
            raise ValueError(f"{len(examples)} examples and {len(groups or [])} groups for {n} completions")
        if prompts is None:
            prompts = [self.task.prompt(ex) if self.task is not None else ex.prompt for ex in examples]
        run = _Run(self, examples, list(prompts), texts, groups)
        pooled = [c for c, _ in self.components if c.isolate]
        if pooled:
            run.pooled(pooled)
        for c, _ in self.components:
            if not c.isolate:
                run.local(c)
        for c, _ in self.components:  # counts a component keeps of its own (a judge's parse failures, tokens)
            take = getattr(c, "take_counts", None)
            if take is not None:
                run.report.counts.update({f"{c.name}/{k}": float(v) for k, v in take().items()})
        if self.combine is not None:
            # a group-level rule; hero also gives each prompt's weight on the advantage (ScoreReport.weights)
            run.report.scores, run.report.weights = self.combine(run.report.components, prompt_groups or groups)
            return run.report
        for i in range(n):
            values = [run.report.components[c.name][i] for c, _ in self.components]
            if all(v is not None for v in values):
                total = 0.0
                for (_, w), v in zip(self.components, values):
                    total += w * v  # type: ignore[operator]
                run.report.scores[i] = total
        return run.report


class _Run:
    """One ``score`` call's state: the report being filled in and the groups that failed."""

    def __init__(
        self,
        scorer: CompositeScorer,
        examples: list[Example],
        prompts: list[Prompt],
        texts: list[str],
        groups: Sequence[int] | None,
    ) -> None:
        self.scorer, self.examples, self.prompts, self.texts, self.groups = scorer, examples, prompts, texts, groups
        n = len(texts)
        self.report = ScoreReport([None] * n, components={c.name: [None] * n for c, _ in scorer.components})
        self.failed: set[int] = set()
        self.named = len(scorer.components) > 1

    def record(self, name: str, i: int, outcome: Outcome) -> None:
        report = self.report
        if outcome.status == "ok":
            report.components[name][i] = outcome.value
            return
        if self.groups is not None:
            self.failed.add(self.groups[i])
        message = f"{name}: {outcome.error}" if self.named else str(outcome.error)
        if outcome.status == "skipped":
            report.skipped += 1
        elif outcome.status == "missing":
            report.missing += 1
            report.note(i, message)
        else:
            report.fail(i, "timeout" if outcome.status == "timeout" else "error", message)

    def pooled(self, components: list[RewardComponent]) -> None:
        pool = self.scorer.pool
        assert pool is not None
        where = [(c, i) for i in range(len(self.texts)) for c in components]
        jobs = [c.job(self.examples[i], self.prompts[i], self.texts[i]) for c, i in where]
        groups = [self.groups[i] for _, i in where] if self.groups is not None else None
        for (c, i), outcome in zip(where, pool.run(jobs, groups, self.scorer.accept)):
            self.record(c.name, i, outcome)

    def local(self, c: RewardComponent) -> None:
        live = [i for i in range(len(self.texts)) if not self._doomed(i)]
        for i in range(len(self.texts)):
            if self._doomed(i):
                self.record(c.name, i, Outcome("skipped"))
        try:
            values = c.score(*self._select(live))
            if len(values) != len(live):
                raise ValueError(f"returned {len(values)} scores for {len(live)} completions")
        except Exception:  # find which samples fail; each is counted below, none is scored 0
            values = None
        for k, i in enumerate(live):
            if values is not None:
                self.record(c.name, i, self._accept(values[k]))
            elif self._doomed(i):
                self.record(c.name, i, Outcome("skipped"))
            else:
                self.record(c.name, i, self._one(c, i))

    def _doomed(self, i: int) -> bool:
        return self.groups is not None and self.groups[i] in self.failed

    def _select(self, rows: list[int]) -> tuple[list[Example], list[Prompt], list[str]]:
        return [self.examples[i] for i in rows], [self.prompts[i] for i in rows], [self.texts[i] for i in rows]

    def _one(self, c: RewardComponent, i: int) -> Outcome:
        try:
            values = c.score(*self._select([i]))
            if len(values) != 1:
                raise ValueError(f"returned {len(values)} scores for 1 completion")
        except Exception as e:  # counted and reported, never scored
            return Outcome("error", error=describe(e))
        return self._accept(values[0])

    def _accept(self, value: Any) -> Outcome:
        try:
            return self.scorer.accept(value)  # type: ignore[no-any-return]
        except Exception as e:
            return Outcome("error", error=describe(e))
