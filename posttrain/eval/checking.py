"""Answer checks for evaluation with a deadline, and never a failure scored as 0.

math-verify parses LaTeX with sympy, which can run for unbounded time on odd
input. ``TaskChecker`` runs such checks in the deadline pool shared with training
rewards (``posttrain.rewards.isolate``: worker processes, a deadline per check, a
hung worker killed and replaced, no signals so any thread may call it). Every
check ends as one ``Check``:

- ``ok``: the function returned ``(answer, score)``;
- ``timeout``: it ran past ``timeout_s`` and its worker was killed;
- ``error``: it raised (or its worker died); the message is kept;
- ``skipped``: an earlier check of the same group (one problem) failed, so the
  problem is unscored anyway and its remaining checks are not run; this bounds
  the cost of a gold answer that hangs every check to one deadline per worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from posttrain.eval.cache import digest
from posttrain.rewards.base import describe
from posttrain.rewards.isolate import DeadlinePool, Outcome, process_pool
from posttrain.rewards.verifier import NO_GOLD, task_verifier
from posttrain.tasks.base import Example, Task
from posttrain.tasks.verifiers import Verifier, judge

Status = Literal["ok", "timeout", "error", "skipped"]


@dataclass(frozen=True)
class Check:
    status: Status
    answer: str | None = None  # the normalised final answer, for majority voting
    score: float = 0.0  # meaningful only when status == "ok"
    error: str | None = None  # what went wrong, for timeout and error


def _as_check(outcome: Outcome) -> Check:
    if outcome.status == "ok":
        try:
            answer, score = outcome.value
            return Check("ok", None if answer is None else str(answer), float(score))
        except Exception as e:  # not an (answer, score) pair: the check's error, not a score
            return Check("error", error=f"the check returned {outcome.value!r:.80}: {type(e).__name__}")
    status: Status = "error" if outcome.status == "missing" else outcome.status
    return Check(status, error=outcome.error)


class CheckPool:
    """Worker processes that run checks with a per-check deadline. Use as a context manager."""

    def __init__(self, workers: int = 2, timeout_s: float = 10.0) -> None:
        if workers < 1:
            raise ValueError(f"a check pool needs at least one worker, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"the check timeout must be > 0 seconds, got {timeout_s}")
        self.size, self.timeout_s = workers, timeout_s
        self._pool: DeadlinePool | None = None  # started on the first run

    def __enter__(self) -> CheckPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pool = None

    def run(
        self,
        fn: Callable[..., tuple[str | None, float]],
        jobs: Sequence[tuple[Any, ...]],
        groups: Sequence[int] | None = None,
    ) -> list[Check]:
        """``fn(*job)`` for every job, in order. ``fn`` must be a module-level function.

        With ``groups``, once a check of a group fails, the group's checks not yet
        started are ``skipped``.
        """
        if not jobs:
            return []
        if self._pool is None:
            self._pool = process_pool(
                self.size, self.timeout_s, what="check", workers_field="eval.check_workers",
                timeout_field="eval.check_timeout_s",
            )  # fmt: skip
        outcomes = self._pool.run([(fn, tuple(job)) for job in jobs], groups)
        return [_as_check(o) for o in outcomes]


# Bump when checking changes in a way that changes cached scores.
CHECKS_VERSION = 1


class TaskChecker:
    """Checks completions against a task's problems, returning one ``Check`` each.

    A task whose verifier may hang (``Verifier.isolate``: math_verify) is checked
    in a ``CheckPool`` with a deadline; the others (regular expressions, the
    built-in task) run inline, where an exception is still an ``error``, not a 0.
    A problem without a gold answer cannot be scored: its checks are errors.
    """

    def __init__(self, task: Task, timeout_s: float = 10.0, workers: int = 2) -> None:
        self.task = task
        self.verifier: Verifier | None = task_verifier(task)
        self.isolated = self.verifier is not None and self.verifier.isolate
        self.timeout_s, self.workers = timeout_s, workers
        # what the scores depend on besides the samples: the cache keeps scores per checker
        self.key = digest(
            [task.name, getattr(task, "format", None), self.verifier.name if self.verifier else None,
             CHECKS_VERSION, timeout_s if self.isolated else None]
        )[:12]  # fmt: skip

    def run(self, problems: Sequence[Example], jobs: Sequence[tuple[int, str]]) -> list[Check]:
        """Check each ``(problem index, completion text)``; a problem's failure skips its later jobs."""
        if not self.isolated:
            return [self._inline(problems[p], text) for p, text in jobs]
        assert self.verifier is not None
        results: list[Check | None] = [None] * len(jobs)
        todo = []
        for i, (p, _) in enumerate(jobs):
            if problems[p].answer is None:
                results[i] = Check("error", error=NO_GOLD)
            else:
                todo.append(i)
        with CheckPool(self.workers, self.timeout_s) as pool:
            args = [(self.verifier.name, problems[jobs[i][0]].answer, jobs[i][1]) for i in todo]
            for i, check in zip(todo, pool.run(judge, args, groups=[jobs[i][0] for i in todo])):
                results[i] = check
        return [r if r is not None else Check("error", error="not run") for r in results]

    def _inline(self, example: Example, text: str) -> Check:
        if example.answer is None:
            return Check("error", error=NO_GOLD)
        try:
            if self.verifier is not None:
                answer, score = self.verifier.judged(example.answer, text)
            else:
                answer, score = self.task.extract(text), self.task.verify(example, text)
        except Exception as e:  # reported and counted, never scored as wrong
            return Check("error", error=describe(e))
        return Check("ok", answer, float(score))
