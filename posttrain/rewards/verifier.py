"""The task's own check as a reward component, in a module that imports no torch.

Reward workers import this module: keeping it free of torch and transformers lets
a replacement worker start in a fraction of a second after a hung check was killed.

A verifier that may hang (``Verifier.isolate``: math_verify) scores each sample as
a job in the deadline pool, sending only the verifier's name, the gold answer and
the completion; the others (regular expressions, the built-in task) run in this
process. Either way a problem without a gold answer is an error, not a 0, and so
is a check that raises: exactly as evaluation's ``TaskChecker`` counts them.
"""

from __future__ import annotations

from posttrain.rewards.base import Job
from posttrain.tasks.base import Example, Prompt, Task
from posttrain.tasks.verifiers import VERIFIERS, Verifier

NO_GOLD = "the problem has no gold answer"


def task_verifier(task: Task) -> Verifier | None:
    """The task's answer checker, when it is one of ``VERIFIERS`` (JSONL tasks); None for a task's own ``verify``."""
    verifier = getattr(task, "verifier", None)
    return verifier if isinstance(verifier, Verifier) else None


def verifier_score(name: str, gold: str | None, text: str) -> float:
    """``VERIFIERS[name].check``, run in a worker: a top-level function, so a worker can be sent it."""
    if gold is None:
        raise ValueError(NO_GOLD)
    return float(VERIFIERS[name].check(gold, text))


class VerifierComponent:
    """``task.verify`` as a reward component: in the deadline pool when the verifier may hang."""

    def __init__(self, task: Task, name: str = "verifier") -> None:
        self.task, self.name = task, name
        self.verifier = task_verifier(task)
        self.isolate = self.verifier is not None and self.verifier.isolate

    def score(self, examples: list[Example], prompts: list[Prompt], texts: list[str]) -> list[float | None]:
        out: list[float | None] = []
        for ex, text in zip(examples, texts):
            if ex.answer is None:
                raise ValueError(NO_GOLD)
            out.append(self.task.verify(ex, text))
        return out

    def job(self, example: Example, prompt: Prompt, text: str) -> Job:
        assert self.verifier is not None
        return verifier_score, (self.verifier.name, example.answer, text)


class VerifierReward:
    """Scores each completion with ``task.verify``; the reward function of the old ``REWARDS`` interface."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self, examples: list[Example], texts: list[str]) -> list[float]:
        return [self.task.verify(ex, text) for ex, text in zip(examples, texts)]
