"""The task's own check as a reward, in a module that imports no torch.

Reward workers (``posttrain.rewards.pool``) unpickle this class, which imports its
module: keeping it free of torch and transformers lets a replacement worker start
in a fraction of a second after a hung check was killed.
"""

from __future__ import annotations

from posttrain.tasks.base import Example, Task


class VerifierReward:
    """Scores each completion with ``task.verify``; a plain object, so it pickles to workers."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self, examples: list[Example], texts: list[str]) -> list[float]:
        return [self.task.verify(ex, text) for ex, text in zip(examples, texts)]
